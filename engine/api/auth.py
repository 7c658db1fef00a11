"""API keys with per-collection scopes.

A key is a random secret shown once; the database keeps only its sha256. Its scopes map a collection name, or "*"
for every collection, to "read" or "write" (write implies read):

    secret = create_api_key(svc, "gallery-frontend", {"photos": "read", "uploads": "write"})
    curl -H "Authorization: Bearer $secret" ...      # or -H "X-API-Key: $secret"

Every endpoint but /health and the OpenAPI docs needs a key: none, unknown or revoked -> 401; a key without the
scope the request's collection needs -> 403.

OMNIBRIDGE_ADMIN_KEY, when set, is accepted as well (the same two headers, compared in constant time) with write
access to every collection: a deployment (docker-compose's UI service) gets a working key without anyone running
`omnibridge keys create` inside a container. It lives in the environment only, never in the database.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from engine.db import ApiKey
from engine.services import Services

from .deps import ServicesDep

READ, WRITE = "read", "write"
ALL = "*"  # the scope key meaning every collection
LEVELS = (READ, WRITE)
ADMIN_NAME = "OMNIBRIDGE_ADMIN_KEY"  # the principal's name when the admin key is used


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scopes(scopes: dict[str, str]) -> dict[str, str]:
    """Raise ValueError naming the bad entry; returns the scopes."""
    if not isinstance(scopes, dict) or not scopes:
        raise ValueError(f'scopes must be a non-empty mapping like {{"photos": "read", "*": "write"}}, got {scopes!r}')
    for name, level in scopes.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"scopes: collection names must be non-empty strings, got {name!r}")
        if level not in LEVELS:
            raise ValueError(f"scopes[{name!r}] must be 'read' or 'write', got {level!r}")
    return dict(scopes)


def create_api_key(svc: Services, name: str, scopes: dict[str, str]) -> str:
    """Store a new key and return its secret (the only time it is seen: only its hash is kept)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    scopes = check_scopes(scopes)
    secret = secrets.token_urlsafe(32)
    with svc.session() as db:
        db.add(ApiKey(name=name.strip(), key_hash=hash_key(secret), scopes=scopes))
        db.commit()
    return secret


def revoke_api_key(svc: Services, name: str) -> int:
    """Revoke every key with this name; returns how many were revoked."""
    with svc.session() as db:
        keys = list(db.scalars(select(ApiKey).where(ApiKey.name == name, ApiKey.revoked.is_(False))))
        for key in keys:
            key.revoked = True
        db.commit()
        return len(keys)


@dataclass(frozen=True)
class Principal:
    """The caller: an unrevoked key and its scopes (key_id None: the admin key of the settings)."""

    key_id: int | None
    name: str
    scopes: dict[str, str]

    def can(self, collection: str | None, need: str) -> bool:
        """Whether the key may `need` ("read"/"write") `collection`; None means every collection (needs "*")."""
        granted = [self.scopes.get(ALL)] + ([self.scopes.get(collection)] if collection is not None else [])
        return any(g == WRITE or (g == READ and need == READ) for g in granted)

    def require(self, collection: str | None, need: str) -> None:
        if not self.can(collection, need):
            what = f"collection {collection!r}" if collection is not None else 'every collection ("*")'
            hint = "" if collection is not None else '; give "collection" to stay within the key\'s collections'
            raise HTTPException(403, f"API key {self.name!r} has no {need} access to {what}{hint}")

    def readable(self, names: list[str]) -> list[str]:
        return [n for n in names if self.can(n, READ)]


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key secret")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key secret>")
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def is_admin_key(svc: Services, secret: str) -> bool:
    """Whether `secret` is the configured OMNIBRIDGE_ADMIN_KEY (False when none is set); constant-time."""
    admin = svc.settings.admin_key
    return bool(admin) and hmac.compare_digest(secret.encode(), admin.encode())


def get_principal(
    svc: ServicesDep,
    api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Principal:
    secret = api_key or (bearer.credentials if bearer else None)
    if not secret:
        raise HTTPException(401, "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                            headers=UNAUTHORIZED)
    if is_admin_key(svc, secret):
        return Principal(None, ADMIN_NAME, {ALL: WRITE})
    with svc.session() as db:
        key = db.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    if key is None or key.revoked:
        raise HTTPException(401, "the API key is unknown or revoked", headers=UNAUTHORIZED)
    return Principal(key.id, key.name, dict(key.scopes))


PrincipalDep = Annotated[Principal, Depends(get_principal)]
