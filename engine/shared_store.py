"""One owner for the embedded vector store, reached by every other process through it.

Qdrant Edge is single-owner: a second open of a shard directory, in this process or another, fails on its WAL lock.
Yet in the embedded default several processes need the store at once: `omnibridge ingest` (or a worker) writes while
`omnibridge search`, the API or the UI read. So the first process that needs the store becomes its *owner*: it takes
an exclusive file lock (`owner.lock`, released by the OS even on SIGKILL), opens the store, and serves calls on a
loopback socket whose address and secret it writes to `owner.json` (readable by this user only). Every other
process is a *client*: it sends `(method, args, kwargs)` and gets the result back (multiprocessing.connection:
length-prefixed pickles, authenticated by the secret).

When the owner exits or dies, its clients see the connection drop, and the first to take the lock becomes the new
owner. A call that was cut off is sent again: every store operation is idempotent (upserts and deletes by point id),
so a repeat changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from .vectors import SpaceNotFound, StoreDamaged

log = logging.getLogger(__name__)

METHODS = ("ensure_space", "spaces", "upsert", "delete", "set_payload", "search", "keyword_search", "count",
           "retrieve", "point_ids", "optimize")
CONNECT_TIMEOUT = 60.0  # seconds to find an owner (or become one) before giving up
CALL_RETRIES = 3


class StoreUnavailable(RuntimeError):
    """No process could open the embedded store; the message says which folder and what to check."""


_ERRORS = {"ValueError": ValueError, "SpaceNotFound": SpaceNotFound, "StoreDamaged": StoreDamaged}  # kept kinds


class SharedStore:
    """A VectorStore (see engine.vectors) that is either the owner of `root` or a client of its owner."""

    def __init__(self, root: Path, factory: Callable[[], object], busy: tuple[type[Exception], ...] = ()):
        """`busy`: errors of the real store meaning "the previous owner has not let go yet" (retried briefly)."""
        self.root = Path(root)
        self.factory = factory
        self.busy = busy
        self._lock = threading.RLock()  # one call at a time through this object
        self._file_lock = FileLock(str(self.root / "owner.lock"))
        self._local = None  # the real store, when this process owns it
        self._conn: Connection | None = None  # the connection to the owner, when it does not
        self._listener: Listener | None = None
        self._clients: set[Connection] = set()  # connections this owner serves
        self._closed = False

    # -- the protocol ----------------------------------------------------------------------------------------

    def ensure_space(self, *a, **kw):
        return self._call("ensure_space", a, kw)

    def spaces(self, *a, **kw):
        return self._call("spaces", a, kw)

    def upsert(self, *a, **kw):
        return self._call("upsert", a, kw)

    def delete(self, *a, **kw):
        return self._call("delete", a, kw)

    def set_payload(self, *a, **kw):
        return self._call("set_payload", a, kw)

    def search(self, *a, **kw):
        return self._call("search", a, kw)

    def keyword_search(self, *a, **kw):
        return self._call("keyword_search", a, kw)

    def count(self, *a, **kw):
        return self._call("count", a, kw)

    def retrieve(self, *a, **kw):
        return self._call("retrieve", a, kw)

    def point_ids(self, *a, **kw):
        return self._call("point_ids", a, kw)

    def optimize(self, *a, **kw):
        return self._call("optimize", a, kw)

    @property
    def is_owner(self) -> bool:
        return self._local is not None

    def close(self) -> None:
        """Hand the store back: stop serving, close the shards, release the lock (clients then take over)."""
        with self._lock:
            self._closed = True
            if self._listener is not None:
                listener, self._listener = self._listener, None
                listener.close()
            for conn in list(self._clients):  # clients see EOF and find the next owner
                conn.close()
            if self._local is not None:
                local, self._local = self._local, None
                local.close()
                (self.root / "owner.json").unlink(missing_ok=True)
                self._file_lock.release(force=True)
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- calls -----------------------------------------------------------------------------------------------

    def _call(self, method: str, args: tuple, kwargs: dict):
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"the vector store at {self.root} was closed in this process")
            for attempt in range(CALL_RETRIES):
                self._attach()
                if self._local is not None:
                    return self._call_local(method, args, kwargs)
                try:
                    self._conn.send((method, args, kwargs))
                    ok, value = self._conn.recv()
                except (EOFError, OSError) as e:  # the owner went away mid-call: find or become the next one
                    log.info("vector store owner gone (%s); reconnecting (attempt %d)", e, attempt + 1)
                    self._conn = None
                    continue
                if ok:
                    return value
                kind, message = value
                raise _ERRORS.get(kind, RuntimeError)(message)
            raise StoreUnavailable(f"the process owning the vector store at {self.root} kept going away; "
                                   "check that no process is stuck (see owner.json there for its pid)")

    def _call_local(self, method: str, args: tuple, kwargs: dict):
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                return getattr(self._local, method)(*args, **kwargs)
            except self.busy:  # a previous owner dropped the lock file first and is still closing its shards
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _attach(self) -> None:
        """Become the owner if nobody is, else connect to the owner (retrying while one starts or leaves)."""
        if self._local is not None or self._conn is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self._file_lock.acquire(timeout=0)
            except Timeout:
                try:
                    self._conn = self._connect()
                    return
                except (OSError, EOFError, ValueError, KeyError) as e:  # owner starting, stopping or just died
                    last_error = e
                    time.sleep(0.1)
                    continue
            try:
                self._become_owner()
            except BaseException:
                self._file_lock.release(force=True)
                raise
            return
        raise StoreUnavailable(f"could not reach the process that owns the vector store at {self.root} "
                               f"within {CONNECT_TIMEOUT:.0f} s ({last_error}); if no omnibridge process is running, "
                               f"delete {self.root / 'owner.json'} and try again")

    def _connect(self) -> Connection:
        info = json.loads((self.root / "owner.json").read_text())
        return Client(("127.0.0.1", info["port"]), authkey=bytes.fromhex(info["key"]))

    def _become_owner(self) -> None:
        self._local = self.factory()
        key = secrets.token_bytes(32)
        self._listener = Listener(("127.0.0.1", 0), authkey=key)
        info = {"port": self._listener.address[1], "key": key.hex(), "pid": os.getpid()}
        tmp = self.root / f"owner.json.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.replace(tmp, self.root / "owner.json")
        threading.Thread(target=self._serve, args=(self._listener,), daemon=True, name="vector-store-owner").start()
        log.info("this process (pid %d) owns the vector store at %s", os.getpid(), self.root)

    # -- serving (owner side) --------------------------------------------------------------------------------

    def _serve(self, listener: Listener) -> None:
        while True:
            try:
                conn = listener.accept()
            except OSError:  # closed
                return
            except Exception:  # a bad handshake (wrong key) must not stop the owner
                log.warning("refused a connection to the vector store", exc_info=True)
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True, name="vector-store-client").start()

    def _handle(self, conn: Connection) -> None:
        self._clients.add(conn)
        try:
            self._handle_calls(conn)
        finally:
            self._clients.discard(conn)
            conn.close()

    def _handle_calls(self, conn: Connection) -> None:
        while True:
            try:
                method, args, kwargs = conn.recv()
            except (EOFError, OSError):
                return
            if method not in METHODS:
                conn.send((False, ("ValueError", f"unknown vector store method {method!r}")))
                continue
            try:
                with self._lock:
                    if self._local is None:  # closed while this call waited: the client reconnects
                        return
                    result = self._call_local(method, args, kwargs)
                reply = (True, result)
            except Exception as e:  # sent back to the caller, who raises it
                kind = type(e).__name__ if type(e).__name__ in _ERRORS else \
                    "ValueError" if isinstance(e, ValueError) else type(e).__name__
                reply = (False, (kind, str(e)))
            try:
                conn.send(reply)
            except (OSError, EOFError):
                return
