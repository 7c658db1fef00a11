"""The product's one command: `omnibridge demo` indexes the sample, then runs the API and the UI as real child
processes (engine/launch.py) until SIGTERM; the launcher's health checks, refusals and clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engine.launch import LaunchError, Launcher
from engine.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
OMNIBRIDGE = [sys.executable, "-c", "from engine.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_launcher_starts_the_api_and_the_ui_then_stops_both(tmp_path):
    settings = load_settings(home=tmp_path / "home", api_port=free_port(), ui_port=free_port())
    with Launcher(settings) as running:
        urls = running.urls
        assert urls == {"api": f"http://127.0.0.1:{settings.api_port}", "ui": f"http://127.0.0.1:{settings.ui_port}"}
        assert httpx.get(urls["api"] + "/health").json()["status"] == "ok"
        assert httpx.get(urls["api"] + "/collections").status_code == 401  # the served API wants a key
        assert httpx.get(urls["ui"] + "/_stcore/health").text == "ok"
        procs = [c.proc for c in running.children]
    assert all(p.poll() is not None for p in procs)
    assert refused(urls["api"] + "/health") and refused(urls["ui"] + "/_stcore/health")


def test_a_busy_port_is_refused_by_its_setting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = load_settings(home=tmp_path / "home", api_port=free_port(), ui_port=port)
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 is already in use.*OMNIBRIDGE_UI_PORT"):
            Launcher(settings).start()


def test_a_child_that_cannot_start_is_reported_with_its_log(tmp_path):
    settings = load_settings(home=tmp_path / "home", api_port=free_port(), ui_port=free_port())
    launcher = Launcher(settings, ui=False, env={"OMNIBRIDGE_DEVICE": "tpu"})  # a bad setting in the child
    with pytest.raises(LaunchError, match=r"(?s)the api stopped at start-up.*api\.log.*OMNIBRIDGE_DEVICE"):
        launcher.start(timeout=60)
    assert launcher.children[0].proc.poll() is not None


def test_demo_indexes_the_sample_then_serves_until_sigterm(tmp_path):
    api_port, ui_port = free_port(), free_port()
    env = dict(os.environ, OMNIBRIDGE_HOME=str(tmp_path / "home"), OMNIBRIDGE_API_PORT=str(api_port),
               OMNIBRIDGE_UI_PORT=str(ui_port), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("OMNIBRIDGE_API_URL", None)
    quick = subprocess.run(OMNIBRIDGE + ["demo", "--no-serve"], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert quick.returncode == 0, quick.stderr
    assert "collection 'samples': 21 photos indexed" in quick.stdout and "'a cat' -> chelsea.png" in quick.stdout
    assert "running" not in quick.stdout and refused(f"http://127.0.0.1:{ui_port}/_stcore/health")

    demo = subprocess.Popen(OMNIBRIDGE + ["demo"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while not any("curl " in line for line in lines) and time.monotonic() < deadline:
            line = demo.stdout.readline()
            assert line, f"the demo exited early (code {demo.wait()}):\n" + "".join(lines)
            lines.append(line)
        out = "".join(lines)
        assert "0 photos indexed, 21 unchanged" in out  # the second run reuses the index
        assert f"  UI   http://127.0.0.1:{ui_port}  (through the API" in out and f"  API  http://127.0.0.1:{api_port}" in out
        assert httpx.get(f"http://127.0.0.1:{api_port}/answer/status").status_code == 200  # answer-ready already
        key = out.split("key with write access to every collection: ")[1].split()[0]
        assert httpx.get(f"http://127.0.0.1:{ui_port}/_stcore/health").text == "ok"
        hits = httpx.post(f"http://127.0.0.1:{api_port}/search", headers={"X-API-Key": key}, timeout=60,
                          json={"text": "a cat", "collection": "samples", "k": 3}).json()["hits"]
        assert Path(hits[0]["path"]).name == "chelsea.png"
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=60)
        assert demo.returncode == 0 and "stopped by SIGTERM; the API and the UI are stopped" in rest
        assert refused(f"http://127.0.0.1:{api_port}/health") and refused(f"http://127.0.0.1:{ui_port}/_stcore/health")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
