"""One Settings for the whole system: embedded defaults, production URLs, and errors that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_defaults_live_in_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIBRIDGE_HOME", str(tmp_path))
    s = load_settings()
    assert s.db_url == f"sqlite:///{tmp_path / 'omnibridge.db'}"
    assert s.embedded_broker and s.celery_broker.startswith("sqla+sqlite:///") and str(tmp_path) in s.celery_broker
    assert s.qdrant_url is None and s.qdrant_path == tmp_path / "qdrant"


def test_production_urls(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIBRIDGE_HOME", str(tmp_path))
    monkeypatch.setenv("OMNIBRIDGE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    monkeypatch.setenv("OMNIBRIDGE_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("OMNIBRIDGE_QDRANT_URL", "http://qdrant:6333")
    s = load_settings()
    assert s.db_url.startswith("postgresql://") and not s.embedded_broker
    assert s.celery_broker == s.celery_backend == "redis://127.0.0.1:6379/0"
    assert s.qdrant_url == "http://qdrant:6333"


@pytest.mark.parametrize("var, value", [
    ("OMNIBRIDGE_BATCH_SIZE", "lots"),
    ("OMNIBRIDGE_BATCH_SIZE", "0"),
    ("OMNIBRIDGE_DATABASE_URL", "mysql://root@localhost/x"),
    ("OMNIBRIDGE_BROKER_URL", "amqp://guest@localhost//"),
    ("OMNIBRIDGE_QDRANT_URL", "qdrant:6333"),
    ("OMNIBRIDGE_DEVICE", "tpu"),
    ("OMNIBRIDGE_MAX_FILE_MB", "-1"),
])
def test_a_bad_value_names_its_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert var in str(e.value) and value in str(e.value)


def test_the_cli_refuses_to_start_on_bad_configuration(tmp_path):
    env = {**os.environ, "OMNIBRIDGE_HOME": str(tmp_path), "OMNIBRIDGE_BROKER_URL": "amqp://guest@localhost//"}
    r = subprocess.run([sys.executable, "-m", "engine.cli", "status"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "OMNIBRIDGE_BROKER_URL" in r.stderr and "redis://" in r.stderr  # names the variable and the fix
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "omnibridge.db").exists()  # nothing was created
