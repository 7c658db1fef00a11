"""N concurrent clients against the served HTTP API for a bounded time: throughput, latency, errors.

    python bench/load.py [--clients 1 4 16] [--seconds 30] [--modes hybrid vector]

Set-up (not timed): a fresh OMNIBRIDGE_HOME, the scikit-image sample ingested (`omnibridge demo --no-serve`), a
read key (`omnibridge keys create`), then `omnibridge serve` as users run it (one uvicorn process) on 127.0.0.1.
Each client loops `POST /search` with text queries drawn in turn from a fixed list, one request in flight per client
(the API's default search: hybrid, at the no-match threshold, so a response may hold fewer than k hits; the mean is
reported). The 1-minute load average is recorded before and after each level (the machine is shared). Any status other
than 200, or a transport error, counts as an error (the target is 0). --modes hybrid vector adds the vector-only
search as a same-run baseline.
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


async def client(url: str, key: str, until: float, offset: int, latencies: list, errors: list, found: list,
                 mode: str) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=60) as http:
        i = offset
        while time.monotonic() < until:
            body = {"text": QUERIES[i % len(QUERIES)], "collection": "samples", "k": 10, "mode": mode}
            t0 = time.perf_counter()
            try:
                r = await http.post("/search", json=body)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                else:
                    found.append(len(r.json().get("hits", [])))
            except httpx.HTTPError as e:
                errors.append(repr(e))
            latencies.append(time.perf_counter() - t0)
            i += 1


async def run(url: str, key: str, clients: int, seconds: float, mode: str = "hybrid") -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    found: list[int] = []
    load_before = os.getloadavg()
    t0 = time.monotonic()
    await asyncio.gather(*(client(url, key, t0 + seconds, c, latencies, errors, found, mode)
                           for c in range(clients)))
    wall = time.monotonic() - t0
    ms = np.array(latencies) * 1000
    return {"clients": clients, "mode": mode, "seconds": round(wall, 1), "requests": len(latencies),
            "throughput_rps": round(len(latencies) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "errors": len(errors), "first_errors": errors[:3],
            "hits_mean": round(float(np.mean(found)), 2) if found else None,
            "load_1min_before": round(load_before[0], 2), "load_1min_after": round(os.getloadavg()[0], 2),
            "ms_in_order": [round(x, 1) for x in ms]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--modes", nargs="+", default=["hybrid"], choices=["hybrid", "vector", "keyword"],
                    help="search modes; with several, each client level runs every mode back to back, the order "
                         "alternating from level to level (a same-run baseline)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "OMNIBRIDGE_HOME": home, "HF_HUB_OFFLINE": "1"}
        omnibridge("demo", "--no-serve", env=env)  # index the sample only (demo would also serve until Ctrl-C)
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
            for mode in args.modes:  # warm-up: the first queries load the model
                asyncio.run(run(url, key, 1, 3, mode))
            results = [asyncio.run(run(url, key, n, args.seconds, mode)) for i, n in enumerate(args.clients)
                       for mode in (args.modes if i % 2 == 0 else args.modes[::-1])]
        finally:
            server.terminate()
            server.wait(30)
    print("| clients | mode | requests | throughput (req/s) | p50 ms | p95 ms | errors | hits per response | "
          "load (1 min) before -> after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['clients']} | {r['mode']} | {r['requests']} | {r['throughput_rps']} | {r['p50_ms']} | "
              f"{r['p95_ms']} | "
              f"{r['errors']} | {r['hits_mean']} | {r['load_1min_before']} -> {r['load_1min_after']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
