"""The ingestion commands as a new user meets them: `omnibridge ingest`, `status` and `search` on the embedded
default (nothing started beforehand), their human output, and their errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.samples import write_photo_sample
from tests.test_ingest import library

ROOT = Path(__file__).resolve().parents[1]


def omnibridge(*args, home: Path, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIBRIDGE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photo_sample(tmp_path_factory.mktemp("photos"))


def test_ingest_status_and_search_in_plain_words(tmp_path, photos):
    home, lib = tmp_path / "home", library(tmp_path, photos)
    r = omnibridge("ingest", str(lib), "--collection", "media", "--workers", "2", home=home)
    assert r.returncode == 0, r.stderr
    assert "indexed 8, duplicates 1, unchanged 0, failed 3, removed 0  (of 12 files seen)" in r.stdout
    assert "failed: " in r.stdout and "truncated.png" in r.stdout and "empty.jpg" in r.stdout

    again = omnibridge("ingest", str(lib), "--collection", "media", "--json", home=home)
    summary = json.loads(again.stdout)
    assert (summary["status"], summary["indexed"], summary["skipped"]) == ("done", 0, 12)

    st = omnibridge("status", home=home)
    assert st.returncode == 0, st.stderr
    assert "media: duplicate 1, failed 3, indexed 8" in st.stdout
    assert st.stdout.count("job ") == 2 and "notes.jpg" in st.stdout

    found = omnibridge("search", "a cup of coffee", "--collection", "media", "--k", "3", home=home)
    assert found.returncode == 0, found.stderr
    hits = [line for line in found.stdout.splitlines() if line[:1].isdigit()]  # after any no-match line
    assert hits[0].split()[2].endswith("coffee.png")  # a file name alone is not a likely match, but ranks first

    hits = json.loads(omnibridge("search", "--image", str(lib / "horse.png"), "--json", home=home).stdout)
    assert hits["no_match"] is False and hits["hits"][0]["path"].endswith("horse.png")
    assert {"id", "score", "path", "caption"} <= set(hits["hits"][0])


def test_mistakes_get_a_message_that_says_the_fix(tmp_path):
    home = tmp_path / "home"
    r = omnibridge("ingest", str(tmp_path / "nope"), home=home)
    assert r.returncode == 2 and "no such file or folder" in r.stderr and "Traceback" not in r.stderr
    r = omnibridge("status", "--collection", "nope", home=home)
    assert r.returncode == 2 and "no collection named 'nope'" in r.stderr and "omnibridge ingest" in r.stderr
    r = omnibridge("search", home=home)
    assert r.returncode == 2 and "--image" in r.stderr
    r = omnibridge("search", "--image", str(tmp_path / "missing.png"), home=home)
    assert r.returncode == 2 and "missing.png" in r.stderr and "Traceback" not in r.stderr
