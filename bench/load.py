"""N concurrent clients against the served HTTP API for a bounded time: throughput, latency, errors.

    python bench/load.py [--clients 1 4 16] [--seconds 30]

Set-up (not timed): a fresh OMNIBRIDGE_HOME, the scikit-image sample ingested (`omnibridge demo`), a read key
(`omnibridge keys create`), then `omnibridge serve` as users run it (one uvicorn process) on 127.0.0.1. Each client
loops `POST /search` with text queries drawn in turn from a fixed list, one request in flight per client. Any
status other than 200, or a transport error, counts as an error (the target is 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ["a cat", "a cup of coffee", "an astronaut", "coins", "a horse", "a rocket launch", "the moon",
           "a clock", "grass", "a brick wall", "a camera man", "a colour wheel"]


def omnibridge(*args: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"omnibridge {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


async def client(url: str, key: str, until: float, offset: int, latencies: list, errors: list) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=60) as http:
        i = offset
        while time.monotonic() < until:
            body = {"text": QUERIES[i % len(QUERIES)], "collection": "samples", "k": 10}
            t0 = time.perf_counter()
            try:
                r = await http.post("/search", json=body)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(repr(e))
            latencies.append(time.perf_counter() - t0)
            i += 1


async def run(url: str, key: str, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.monotonic()
    await asyncio.gather(*(client(url, key, t0 + seconds, c, latencies, errors) for c in range(clients)))
    wall = time.monotonic() - t0
    ms = np.array(latencies) * 1000
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(latencies),
            "throughput_rps": round(len(latencies) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "errors": len(errors), "first_errors": errors[:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "OMNIBRIDGE_HOME": home, "HF_HUB_OFFLINE": "1"}
        omnibridge("demo", env=env)
        key = omnibridge("keys", "create", "load-test", "--scope", "samples=read", env=env).strip()
        server = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--port", str(args.port)], env=env,
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{args.port}"
        try:
            deadline = time.monotonic() + 120
            while True:  # the server is up when /health answers
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("omnibridge serve did not come up")
                time.sleep(0.3)
            asyncio.run(run(url, key, 1, 3))  # warm-up: the first queries load the model
            results = [asyncio.run(run(url, key, n, args.seconds)) for n in args.clients]
        finally:
            server.terminate()
            server.wait(30)
    print("| clients | requests | throughput (req/s) | p50 ms | p95 ms | errors |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['clients']} | {r['requests']} | {r['throughput_rps']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['errors']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
