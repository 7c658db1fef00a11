"""Run the product: the HTTP API (uvicorn) and the UI (Streamlit) as child processes of one command.

    with Launcher(settings) as running:      # starts both, waits until both answer their health checks
        print(running.urls)                  # {"api": "http://127.0.0.1:8000", "ui": "http://127.0.0.1:8501"}
        running.wait()                       # until Ctrl-C, SIGTERM or a child exits; then both are stopped

Each child's output goes to HOME/logs/{api,ui}.log; a child that fails to start is reported with the end of its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .api.limits import SERVER_LIMITS
from .settings import Settings

UI_APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
START_TIMEOUT = 180.0  # seconds for a child to answer its health check (the UI loads the model on first use)


class LaunchError(RuntimeError):
    """A child could not start; the message says which, why (its log's end) and what to do."""


@dataclass
class Child:
    name: str
    command: list[str]
    url: str
    health: str  # path answered with 200 once the child serves
    log: Path
    port: int
    port_variable: str  # the setting that moves it to another port
    proc: subprocess.Popen | None = field(default=None, repr=False)


def api_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "engine.api.main:create_app", "--factory", "--host", host,
            "--port", str(port), "--log-level", "warning", "--http", SERVER_LIMITS["http"],
            "--h11-max-incomplete-event-size", str(SERVER_LIMITS["h11_max_incomplete_event_size"]),
            "--timeout-keep-alive", str(SERVER_LIMITS["timeout_keep_alive"])]


def ui_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(UI_APP), "--server.headless", "true",
            "--server.address", host, "--server.port", str(port), "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer"]


def check_port_free(host: str, port: int, variable: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: a closed port's TIME_WAIT is fine
        try:
            s.bind((host, port))
        except OSError:
            raise LaunchError(f"port {port} on {host} is already in use: stop what runs there or choose another "
                              f"port with {variable}=PORT") from None


def child_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the children: this one, pinned to the same data directory and model."""
    env = dict(os.environ)
    env.update({"OMNIBRIDGE_HOME": str(settings.home), "OMNIBRIDGE_MODEL": settings.model,
                "PYTHONUNBUFFERED": "1"})
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra or {})
    return env


class Launcher:
    def __init__(self, settings: Settings, api: bool = True, ui: bool = True, env: dict[str, str] | None = None):
        host = settings.api_host
        logs = settings.home / "logs"
        self.children: list[Child] = []
        if api:
            self.children.append(Child("api", api_command(host, settings.api_port),
                                       f"http://{_display(host)}:{settings.api_port}", "/answer/status", logs / "api.log",
                                       settings.api_port, "OMNIBRIDGE_API_PORT"))
        if ui:
            self.children.append(Child("ui", ui_command(host, settings.ui_port),
                                       f"http://{_display(host)}:{settings.ui_port}", "/_stcore/health",
                                       logs / "ui.log", settings.ui_port, "OMNIBRIDGE_UI_PORT"))
        self.settings = settings
        self.env = child_env(settings, env)

    @property
    def urls(self) -> dict[str, str]:
        return {c.name: c.url for c in self.children}

    def start(self, timeout: float = START_TIMEOUT) -> Launcher:
        for c in self.children:
            check_port_free(self.settings.api_host, c.port, c.port_variable)
        try:
            for c in self.children:
                c.log.parent.mkdir(parents=True, exist_ok=True)
                with open(c.log, "ab") as log:
                    c.proc = subprocess.Popen(c.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                              cwd=UI_APP.parents[1])
            for c in self.children:
                self._wait_healthy(c, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, c: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if c.proc.poll() is not None:
                raise LaunchError(f"the {c.name} stopped at start-up (exit code {c.proc.returncode}); the end of "
                                  f"{c.log}:\n{_tail(c.log)}")
            try:
                if httpx.get(c.url + c.health, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise LaunchError(f"the {c.name} did not answer {c.url}{c.health} within {timeout:.0f} s; the end of "
                          f"{c.log}:\n{_tail(c.log)}")

    def wait(self) -> str:
        """Block until Ctrl-C, SIGTERM or a child exits; returns why. The caller stops the children."""
        stopped: list[str] = []

        def on_term(signum, _frame):
            stopped.append(signal.Signals(signum).name)

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            while not stopped:
                for c in self.children:
                    if c.proc.poll() is not None:
                        return f"the {c.name} exited with code {c.proc.returncode} (see {c.log})"
                time.sleep(0.3)
            return f"stopped by {stopped[0]}"
        except KeyboardInterrupt:
            return "stopped by Ctrl-C"
        finally:
            signal.signal(signal.SIGTERM, previous)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to each running child, then SIGKILL after `grace` seconds."""
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in running:
            c.proc.terminate()
        deadline = time.monotonic() + grace
        for c in running:
            try:
                c.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()

    def __enter__(self) -> Launcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _display(host: str) -> str:
    """The address to print: a wildcard bind is reached on this machine at 127.0.0.1."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
