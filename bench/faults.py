"""Fault injection on the embedded default: real processes, real files, real damage.

    python bench/faults.py [--images 96] [--json]

For each fault, on a fresh data directory holding an indexed library of real photos (scikit-image's, plus rotated
and cropped views so every file is distinct), it reports whether the product noticed, how it recovered (by itself /
by the documented command / not), and how many indexed files were lost (must be 0):

  api-killed-mid-job     SIGKILL `omnibridge serve` during an API ingest, start it again, run nothing else
  store-owner-killed     SIGKILL the API while it owns the vector store and `omnibridge ingest` is its client
  vector-folder-deleted  rm -rf HOME/qdrant between runs                    -> `omnibridge doctor --repair`
  vector-files-garbled   random bytes over the vector segment files           -> `omnibridge doctor --repair`
  database-corrupted     garbage over the SQLite file (a backup exists)       -> `omnibridge restore BACKUP`
  disk-full              HOME on a small tmpfs filled up mid-ingest (needs root to mount; skipped otherwise)
                                                                              -> free space, `omnibridge ingest` again
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ADMIN = "fault-bench-admin-key-0123456789abcdef"


def library(folder: Path, n: int) -> Path:
    """n distinct real pictures: the sample photos, rotated and cropped."""
    from engine.samples import write_photo_sample

    sample = write_photo_sample(folder / "sample").parent / "images"
    photos = sorted(sample.glob("*.png"))
    out = folder / "lib"
    out.mkdir(parents=True)
    for i in range(n):
        im = Image.open(photos[i % len(photos)]).convert("RGB")
        w, h = im.size
        k = i // len(photos)
        im = im.rotate(17 * k, expand=True).crop((k * 7 % (w // 4), k * 5 % (h // 4), w, h))
        im.save(out / f"{photos[i % len(photos)].stem}-{i:03d}.jpg", quality=90)
    return out


def env_for(home: Path) -> dict:
    return {**os.environ, "OMNIBRIDGE_HOME": str(home), "OMNIBRIDGE_LIBRARY_ROOTS": str(home.parent.parent),
            "OMNIBRIDGE_ADMIN_KEY": ADMIN, "OMNIBRIDGE_JOB_STALE_SECONDS": "3", "OMNIBRIDGE_BATCH_SIZE": "4",
            "HF_HUB_OFFLINE": "1"}


def cli(home: Path, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from engine.cli import main; main()", *args], env=env_for(home),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(home: Path, port: int) -> subprocess.Popen:
    from engine.launch import api_command

    log = open(home.parent / "api.log", "ab")
    proc = subprocess.Popen(api_command("127.0.0.1", port), env=env_for(home), cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"the API did not start; see {home.parent / 'api.log'}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def indexed_in_store(home: Path) -> set[str]:
    """Files that are indexed in SQL *and* have their image point in the vector store (what search can find)."""
    from sqlalchemy import select

    from engine.db import Asset, Vector
    from engine.services import Services, close_store
    from engine.settings import load_settings

    svc = Services(load_settings(home=home))
    try:
        with svc.session() as db:
            rows = db.execute(select(Asset.uri, Vector.point_id).join(Vector, Vector.asset_id == Asset.id)
                              .where(Asset.status == "indexed", Vector.kind == "image")).all()
        space = svc.model_row()[1]
        present = {pid for pid, _, vec in svc.store.retrieve(space, [r[1] for r in rows], with_vectors=True)
                   if vec is not None and 0.5 <= float(np.linalg.norm(vec)) <= 2.0}
        return {Path(uri).name for uri, pid in rows if pid in present}
    finally:
        close_store(svc.settings)
        svc.sessions.kw["bind"].dispose()


def wait_job(port: int, job_id: int, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"http://127.0.0.1:{port}/jobs/{job_id}", headers={"X-API-Key": ADMIN}, timeout=30).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.3)
    return job


def row(fault, noticed, recovery, lost, seconds, note="") -> dict:
    return {"fault": fault, "noticed": noticed, "recovery": recovery, "lost": lost, "seconds": round(seconds, 1),
            "note": note}


# -- the faults ------------------------------------------------------------------------------------------------

def api_killed_mid_job(work: Path, lib: Path, n: int) -> dict:
    home, port = work / "home", free_port()
    api = start_api(home, port)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/collections/lib/ingest", json={"paths": [str(lib)]},
                       headers={"X-API-Key": ADMIN}, timeout=60)
        job_id = r.json()["id"]
        while httpx.get(f"http://127.0.0.1:{port}/jobs/{job_id}", headers={"X-API-Key": ADMIN},
                        timeout=30).json()["indexed"] < 8:
            time.sleep(0.05)
        api.send_signal(signal.SIGKILL)
        api.wait()
        t0 = time.monotonic()
        api = start_api(home, port)
        job = wait_job(port, job_id)
        seconds = time.monotonic() - t0
    finally:
        stop(api)
    found = indexed_in_store(home)
    auto = job["status"] == "done" and len(found) == n
    return row("api-killed-mid-job", "job left running", "automatic (restart)" if auto else "NOT recovered",
               n - len(found), seconds, f"job {job['status']}, {job['indexed']}/{n} indexed, each once")


def store_owner_killed(work: Path, lib: Path, n: int) -> dict:
    home, port = work / "home", free_port()
    api = start_api(home, port)  # /health made it the owner of the vector store
    ingest = subprocess.Popen([sys.executable, "-c", "from engine.cli import main; main()", "ingest", str(lib),
                               "--collection", "lib", "--json"], env=env_for(home), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        from engine.settings import load_settings

        owner = json.loads((load_settings(home=home).qdrant_path / "owner.json").read_text())
        assert owner["pid"] == api.pid, owner
        import sqlite3

        t0 = time.monotonic()
        while True:  # the CLI, a client of the API's store, has indexed a few batches
            with sqlite3.connect(home / "omnibridge.db") as c:
                got = c.execute("select coalesce(max(indexed), 0) from jobs").fetchone()[0]
            if got >= 8 or time.monotonic() - t0 > 600:
                break
            time.sleep(0.05)
        api.send_signal(signal.SIGKILL)
        api.wait()
        t0 = time.monotonic()
        out, err = ingest.communicate(timeout=900)
        seconds = time.monotonic() - t0
    finally:
        stop(api)
        stop(ingest)
    found = indexed_in_store(home)
    ok = ingest.returncode == 0 and len(found) == n
    return row("store-owner-killed", "client lost its owner", "automatic (client took over)" if ok else
               f"NOT recovered (exit {ingest.returncode}: {err.strip().splitlines()[-1:] if err else ''})",
               n - len(found), seconds)


def _indexed(work: Path, lib: Path, n: int) -> Path:
    home = work / "home"
    out = cli(home, "ingest", str(lib), "--collection", "lib", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(indexed_in_store(home)) == n
    return home


def _doctor_repair(home: Path, n: int) -> tuple[str, int, float]:
    """Run the documented fix; (recovery, files lost, seconds)."""
    t0 = time.monotonic()
    repair = cli(home, "doctor", "--repair")
    seconds = time.monotonic() - t0
    found = indexed_in_store(home)
    ok = repair.returncode == 0 and len(found) == n and cli(home, "doctor").returncode == 0
    return ("`omnibridge doctor --repair`" if ok else "NOT recovered"), n - len(found), seconds


def vector_folder_deleted(work: Path, lib: Path, n: int) -> dict:
    home = _indexed(work, lib, n)
    shutil.rmtree(home / "qdrant")
    status = cli(home, "status")
    noticed = "doctor --repair" in status.stderr
    skipped = json.loads(cli(home, "ingest", str(lib), "--collection", "lib", "--json").stdout)["skipped"]
    recovery, lost, seconds = _doctor_repair(home, n)
    return row("vector-folder-deleted", "status warns" if noticed else "NOT noticed", recovery, lost, seconds,
               f"a plain re-ingest skips {skipped} unchanged files")


def vector_files_garbled(work: Path, lib: Path, n: int) -> dict:
    home = _indexed(work, lib, n)
    rng = np.random.default_rng(0)
    for f in sorted((home / "qdrant").rglob("*")):
        if f.is_file() and "segments" in f.parts and f.stat().st_size > 4096:
            data = bytearray(f.read_bytes())
            data[1024:-1024] = rng.integers(0, 256, len(data) - 2048, dtype=np.uint8).tobytes()
            f.write_bytes(bytes(data))
    search = cli(home, "search", "a cup of coffee", "--collection", "lib", "--json", "--mode", "vector")
    impossible = search.returncode == 0 and any(abs(h["similarity"] or 0) > 2
                                                for h in json.loads(search.stdout)["hits"])
    check = cli(home, "doctor")
    noticed = ("doctor --repair" in search.stderr or check.returncode == 1) and not impossible
    recovery, lost, seconds = _doctor_repair(home, n)
    return row("vector-files-garbled", "doctor reports it" if noticed else "NOT noticed", recovery, lost, seconds,
               "search refused impossible scores" if "doctor --repair" in search.stderr else "")


def database_corrupted(work: Path, lib: Path, n: int) -> dict:
    home = _indexed(work, lib, n)
    assert cli(home, "backup", str(work / "backup")).returncode == 0
    late = work / "late"
    late.mkdir()
    for f in sorted(lib.iterdir())[:5]:  # files indexed after the backup
        Image.open(f).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(late / f"late-{f.name}")
    assert cli(home, "ingest", str(late), "--collection", "lib").returncode == 0
    db = home / "omnibridge.db"
    data = bytearray(db.read_bytes())
    data[:4096] = os.urandom(4096)
    db.write_bytes(bytes(data))
    status = cli(home, "status")
    noticed = status.returncode == 2 and "Traceback" not in status.stderr and "omnibridge restore" in status.stderr
    t0 = time.monotonic()
    restore = cli(home, "restore", str(work / "backup"))
    seconds = time.monotonic() - t0
    found = indexed_in_store(home)
    ok = restore.returncode == 0 and len(found) == n + 5
    return row("database-corrupted", "one-line error naming the file" if noticed else "NOT noticed",
               "`omnibridge restore BACKUP`" if ok else f"NOT recovered ({restore.stderr.strip()[-200:]})",
               n + 5 - len(found), seconds, "5 files indexed after the backup found again")


def disk_full(work: Path, lib: Path, n: int) -> dict:
    if os.geteuid() != 0:
        return row("disk-full", "-", "skipped (needs root to mount a tmpfs)", 0, 0)
    mnt = work / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)], check=True)
    try:
        home = mnt / "home"
        half = work / "half"
        half.mkdir()
        for f in sorted(lib.iterdir())[: n // 2]:
            shutil.copy(f, half / f.name)
        first = cli(home, "ingest", str(half), "--collection", "lib", "--json")
        assert first.returncode == 0, first.stderr[-1000:]
        filler = mnt / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill the disk up, then give back ~64 KiB
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        with open(filler, "r+b") as f:
            f.truncate(max(filler.stat().st_size - 64 * 1024, 0))
        full = cli(home, "ingest", str(lib), "--collection", "lib", "--json")
        said = full.stdout + full.stderr
        noticed = "job stopped: 'MB free' named" if "MB free" in said else \
            "the OS error" if "No space left" in said else f"exit {full.returncode}" if full.returncode else ""
        filler.unlink()
        t0 = time.monotonic()
        again = cli(home, "ingest", str(lib), "--collection", "lib", "--json")
        if again.returncode != 0 or cli(home, "doctor").returncode != 0:
            cli(home, "doctor", "--repair")
        seconds = time.monotonic() - t0
        found = indexed_in_store(home)
        ok = len(found) == n
        return row("disk-full", noticed or "NOT noticed",
                   "free space, `omnibridge ingest` again" if ok else "NOT recovered", n - len(found), seconds,
                   f"first half ({n // 2}) kept through the failure; the full run exited {full.returncode}")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


FAULTS = [api_killed_mid_job, store_owner_killed, vector_folder_deleted, vector_files_garbled, database_corrupted,
          disk_full]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--only", nargs="*", help="run only these faults")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="omnibridge-faults-") as tmp:
        lib = library(Path(tmp) / "data", args.images)
        for fault in FAULTS:
            name = fault.__name__.replace("_", "-")
            if args.only and name not in args.only:
                continue
            work = Path(tmp) / name
            work.mkdir()
            try:
                rows.append(fault(work, lib, args.images))
            except Exception as e:  # a fault the product did not survive is a result, not a crash of the bench
                import traceback

                traceback.print_exc()
                rows.append(row(name, "?", f"bench error: {type(e).__name__}: {e}", -1, 0))
            print(json.dumps(rows[-1]), file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
        return
    print("| fault | noticed | recovered | files lost | seconds | note |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fault']} | {r['noticed']} | {r['recovery']} | {r['lost']} | {r['seconds']} | {r['note']} |")


if __name__ == "__main__":
    main()
