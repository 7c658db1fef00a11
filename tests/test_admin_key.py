"""OMNIBRIDGE_ADMIN_KEY through the real app: accepted (Bearer or X-API-Key) with write access to every collection,
a wrong value is 401, and without it only the database's keys work."""

from __future__ import annotations

import secrets

import pytest
from fastapi.testclient import TestClient

from engine.api.auth import create_api_key
from engine.api.main import create_app
from engine.services import Services
from engine.settings import load_settings

ADMIN = secrets.token_hex(24)


def client_for(tmp_path, admin_key: str | None) -> tuple[TestClient, Services]:
    svc = Services(load_settings(home=tmp_path / "home", admin_key=admin_key))
    return TestClient(create_app(svc)), svc


@pytest.fixture
def with_admin(tmp_path):
    client, svc = client_for(tmp_path, ADMIN)
    with client:
        yield client, svc


@pytest.fixture
def without_admin(tmp_path):
    client, svc = client_for(tmp_path, None)
    with client:
        yield client, svc


def test_the_admin_key_is_accepted_in_both_headers(with_admin):
    client, _ = with_admin
    for headers in ({"Authorization": f"Bearer {ADMIN}"}, {"X-API-Key": ADMIN}):
        r = client.get("/collections", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"collections": []}


def test_the_admin_key_writes_to_every_collection(with_admin):
    client, svc = with_admin
    reader = create_api_key(svc, "reader", {"photos": "read"})
    body = {"paths": ["relative/folder"]}  # refused as 400 only after the write check has passed
    r = client.post("/collections/anything/ingest", json=body, headers={"X-API-Key": reader})
    assert r.status_code == 403 and "no write access" in r.json()["detail"]
    r = client.post("/collections/anything/ingest", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 400 and "absolute server path" in r.json()["detail"]
    # a key with write access to '*' may name folders outside the data directory: the admin key gets that far too
    r = client.post("/collections/photos/ingest", json={"paths": ["/no/such/../folder"]},
                    headers={"X-API-Key": ADMIN})
    assert r.status_code == 400


@pytest.mark.parametrize("wrong", [ADMIN[:-1], ADMIN + "x", ADMIN.upper(), "Bearer", "é" * 48])
def test_a_wrong_admin_key_is_401(with_admin, wrong):
    client, _ = with_admin
    for headers in ({"Authorization": f"Bearer {wrong}".encode()}, {"X-API-Key": wrong.encode()}):  # raw bytes
        r = client.get("/collections", headers=headers)
        assert r.status_code == 401, (wrong, r.text)
        assert r.headers["www-authenticate"] == "Bearer"


def test_database_keys_still_work_next_to_the_admin_key(with_admin):
    client, svc = with_admin
    key = create_api_key(svc, "photos", {"photos": "read"})
    assert client.get("/collections", headers={"X-API-Key": key}).status_code == 200


def test_without_an_admin_key_only_database_keys_work(without_admin):
    client, svc = without_admin
    assert svc.settings.admin_key is None
    assert client.get("/collections", headers={"X-API-Key": ADMIN}).status_code == 401
    assert client.get("/collections", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 401
    key = create_api_key(svc, "all", {"*": "write"})
    assert client.get("/collections", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/collections").status_code == 401


def test_a_weak_admin_key_is_refused_at_start_up(tmp_path):
    with pytest.raises(ValueError, match="OMNIBRIDGE_ADMIN_KEY: is too weak"):
        load_settings(home=tmp_path, admin_key="changeme")
