"""The files an operator deploys with: the systemd unit, the Containerfile, the nginx snippet, the env example.

Each is checked against the code it runs (the CLI, `deploy/settings.py`, the socket names) and, where
the tool is on this machine, by the tool itself (`systemd-analyze verify`, `nginx -t`). No container
engine runs here, so the Containerfile is read, not built.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deploy.serve
from deploy.cli import main as cli_main
from deploy.settings import SettingsError, load_config
from deploy.sockets import SURFACES
from functions.config import PRESET_BASE_URLS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "hero-aibroker.service"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
NGINX = DEPLOY / "nginx" / "aibroker.conf"
ENV_EXAMPLE = DEPLOY / "aibroker.env.example"
UNIT_BINARY = "/opt/hero/aibroker/.venv/bin/aibroker"
TOOL_TIMEOUT_S = 60.0


# ---- systemd ------------------------------------------------------------------------------------------


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd allows a key more than once."""
    section, out = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(key: str) -> list[str]:
    return [v for s, k, v in unit_entries(UNIT.read_text()) if s == "Service" and k == key]


def unit_environment() -> dict[str, str]:
    return dict(item.partition("=")[::2] for v in unit_values("Environment") for item in v.split())


def venv_aibroker() -> str:
    script = Path(sys.executable).with_name("aibroker")
    found = str(script) if script.exists() else shutil.which("aibroker")
    if not found:
        pytest.skip("the aibroker console script is not installed")
    return found


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    assert UNIT_BINARY in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(UNIT_BINARY, venv_aibroker()))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert UNIT.name not in done.stderr, done.stderr  # no warning about our unit (others' units may warn)


def test_the_unit_is_hardened_and_may_write_only_its_data_and_sockets() -> None:
    assert unit_values("NoNewPrivileges") == ["yes"]
    assert unit_values("ProtectSystem") == ["strict"]
    assert unit_values("ProtectHome") == ["yes"]
    assert unit_values("User") and unit_values("User") != ["root"]
    env = unit_environment()
    data_dir, socket_root = Path(env["AIBROKER_DATA_DIR"]), Path(env["HERO_SOCKET_DIR"])
    writable = [Path(p) for v in unit_values("ReadWritePaths") for p in v.split()]
    assert data_dir in writable and socket_root in writable, writable
    sockets = socket_root / "hero_aibroker"  # where `serve` binds them
    assert any(sockets.is_relative_to(p) for p in writable)
    assert set(writable) == {data_dir, socket_root}, "nothing else is writable"


def test_the_unit_runs_serve_and_stops_and_reloads_by_signal() -> None:
    [exec_start] = unit_values("ExecStart")
    binary, *args = exec_start.split()
    assert binary == UNIT_BINARY and args[0] == "serve"
    parsed = _serve_args(args[1:])
    assert parsed.no_tcp and not parsed.tcp and not parsed.no_sockets  # sockets only
    assert unit_values("KillSignal") == ["SIGTERM"]
    assert unit_values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    stop_s = int(unit_values("TimeoutStopSec")[0])
    assert stop_s > load_config({}).shutdown_grace_s, "systemd must not SIGKILL before the grace period ends"


# ---- the Containerfile ----------------------------------------------------------------------------------


def container_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def container_env() -> dict[str, str]:
    return dict(item.partition("=")[::2] for op, rest in container_instructions() if op == "ENV"
                for item in rest.split())


def test_the_container_runs_as_a_non_root_user_with_a_data_volume() -> None:
    instructions = container_instructions()
    users = [rest for op, rest in instructions if op == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, (op, _) in enumerate(instructions) if op == "USER")
    assert all(op != "RUN" for op, _ in instructions[last_user:]), "a RUN after USER runs as that user, not root"
    volumes = [v for op, rest in instructions if op == "VOLUME" for v in json.loads(rest)]
    env = container_env()
    assert env["AIBROKER_DATA_DIR"] in volumes and env["HERO_SOCKET_DIR"] in volumes, (volumes, env)
    assert ("STOPSIGNAL", "SIGTERM") in instructions


def test_the_container_copies_only_paths_that_exist() -> None:
    copies = [rest.split() for op, rest in container_instructions() if op in ("COPY", "ADD")]
    assert copies
    for args in copies:
        assert not any(a.startswith("--from") for a in args), args
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
    copied = {Path(s).parts[0] for args in copies for s in args[:-1]}
    packages = {"domain", "eventlog", "functions", "deploy"}  # pyproject's packages
    assert packages <= copied and "pyproject.toml" in copied


def _serve_args(argv: list[str]) -> argparse.Namespace:
    """What `aibroker serve ARGV` hands to deploy.serve.main (which is not run)."""
    seen: list[argparse.Namespace] = []
    real = deploy.serve.main
    deploy.serve.main = lambda args: seen.append(args) or 0  # type: ignore[assignment]
    try:
        assert cli_main(["serve", *argv]) == 0
    finally:
        deploy.serve.main = real
    return seen[0]


CONTAINER_PORT_CLASH = (
    "BUG: deploy/container/Containerfile CMD [\"--tcp\", \"rest=0.0.0.0:8080\"] omits --no-tcp, so `aibroker serve` "
    "also binds its default rest listener 127.0.0.1:8080 (and rpc 127.0.0.1:8081) and then exits 2 with "
    "'cannot listen on 0.0.0.0:8080: Address already in use'. Fix: CMD [\"--no-tcp\", \"--tcp\", "
    "\"rest=0.0.0.0:8080\"] (or [\"--host\", \"0.0.0.0\"])")


def test_the_containers_command_binds_each_port_once() -> None:
    instructions = dict(container_instructions())
    entrypoint, cmd = json.loads(instructions["ENTRYPOINT"]), json.loads(instructions["CMD"])
    assert entrypoint[:2] == ["aibroker", "serve"]
    args = _serve_args([*entrypoint[2:], *cmd])
    plan = deploy.serve.listeners(args.tcp, False, Path("/unused"))
    ports = [int(lst.address.rpartition(":")[2]) for lst in plan if lst.is_tcp]
    assert 8080 in ports  # what EXPOSE and HEALTHCHECK use
    assert len(ports) == len(set(ports)), [lst.address for lst in plan]


# ---- nginx -----------------------------------------------------------------------------------------------


def nginx_upstreams(text: str) -> dict[str, str]:
    return dict(re.findall(r"upstream\s+(\w+)\s*\{[^}]*?server\s+unix:([^;\s]+)", text))


def nginx_locations(text: str) -> dict[str, str]:
    """location prefix -> its block body (blocks hold no nested braces here)."""
    return {m[1].strip(): m[2] for m in re.finditer(r"location\s+([^{]+)\{([^}]*)\}", text)}


def test_nginx_has_an_upstream_for_each_socket() -> None:
    upstreams = nginx_upstreams(NGINX.read_text())
    paths = sorted(Path(p) for p in upstreams.values())
    socket_dir = Path(unit_environment()["HERO_SOCKET_DIR"]) / "hero_aibroker"
    assert paths == sorted(socket_dir / f"{s}.sock" for s in SURFACES), upstreams


def test_nginx_forwards_the_callers_address_and_the_prefix() -> None:
    text = NGINX.read_text()
    upstreams = nginx_upstreams(text)
    by_socket = {Path(p).name: name for name, p in upstreams.items()}
    locations = nginx_locations(text)

    def block_to(sock: str) -> str:
        [body] = [b for b in locations.values() if f"http://{by_socket[sock]}" in b]
        return body

    for sock in ("rest.sock", "web_v1.sock"):
        body = block_to(sock)
        assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in body, body
        assert "proxy_set_header X-Real-IP $remote_addr;" in body, body
        assert "proxy_buffering off;" in body, body  # SSE chunks go out as they come
        assert "proxy_http_version 1.1;" in body, body
    web = block_to("web_v1.sock")
    assert "proxy_set_header X-Forwarded-Prefix /hero_aibroker;" in web, web
    assert "/hero_aibroker/v1/" in locations


def test_nginx_accepts_the_snippet(tmp_path: Path) -> None:
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n  access_log off;\n  include {NGINX};\n}}\n")
    done = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT_S)
    assert done.returncode == 0, done.stderr


# ---- the env example ----------------------------------------------------------------------------------


def example_names() -> list[str]:
    """Every variable the example mentions, set or commented out."""
    return re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)


def settings_names() -> set[str]:
    """The variables deploy/settings.py reads: its quoted names, plus each preset's key variables."""
    source = (DEPLOY / "settings.py").read_text()
    quoted = set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', source))
    keys = {f"{name.upper()}_API_KEY{s}" for name in PRESET_BASE_URLS for s in ("", "S")}
    return quoted | keys


def read_env_file(text: str, *, shell: bool) -> dict[str, str]:
    """`KEY=value` lines as the service would get them: a shell drops `  # comment`; systemd's
    EnvironmentFile= and `docker --env-file` keep it in the value (only whole-line comments are comments)."""
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if shell:
            value = re.sub(r"\s+#.*$", "", value)
        assert not value.startswith(("'", '"')), "quoted values: this reader does not unquote"
        out[key.strip()] = value.strip()
    return out


def test_every_variable_in_the_env_example_is_one_settings_reads() -> None:
    names = example_names()
    assert len(names) >= 20 and len(names) == len(set(names)), names
    unknown = sorted(set(names) - settings_names())
    assert not unknown, f"the example documents variables nothing reads: {unknown}"


def test_the_env_examples_values_are_valid_settings() -> None:
    env = read_env_file(ENV_EXAMPLE.read_text(), shell=True)
    config = load_config(env)
    assert (config.routing_strategy, config.max_attempts, config.shutdown_grace_s) == ("cheapest", 3, 30.0)
    assert config.log_format == "json" and config.upstream_client == "aiohttp"


INLINE_COMMENTS = (
    "BUG: deploy/aibroker.env.example puts comments after values (ROUTING_STRATEGY=cheapest   # or fastest, "
    "EXPECTED_OUTPUT_TOKENS, UPSTREAM_CLIENT, LOG_LEVEL, LOG_FORMAT); its header says to copy it to "
    "/etc/hero/aibroker.env, the unit's EnvironmentFile=, and systemd (like docker --env-file) keeps an inline "
    "comment as part of the value, so load_config refuses e.g. ROUTING_STRATEGY='cheapest          # or fastest' "
    "and the service exits 2. Fix: move those comments onto their own lines")
ENV_FILE_OVERRIDES_UNIT = (
    "BUG: deploy/aibroker.env.example sets AIBROKER_DATA_DIR=~/hero/var/hero_aibroker/ and "
    "HERO_SOCKET_DIR=~/hero/var/sockets uncommented; copied to /etc/hero/aibroker.env as its header says, "
    "these override the unit's Environment= paths (systemd: settings from EnvironmentFile= override "
    "Environment=), so the service writes under the hero user's home, which ProtectHome=yes hides and "
    "ReadWritePaths does not cover. Fix: comment them out in the example (noting the unit sets them)")


def test_the_env_example_works_as_the_units_environment_file() -> None:
    env = read_env_file(ENV_EXAMPLE.read_text(), shell=False)
    try:
        load_config(env)
    except SettingsError as exc:
        pytest.fail(f"systemd would start the broker with a refused setting: {exc}")


def test_the_env_example_does_not_override_the_units_paths() -> None:
    assert "EnvironmentFile=-/etc/hero/aibroker.env" in UNIT.read_text()
    assert "/etc/hero/aibroker.env" in ENV_EXAMPLE.read_text()
    env = read_env_file(ENV_EXAMPLE.read_text(), shell=True)
    clashes = {k: (v, env[k]) for k, v in unit_environment().items() if k in env and env[k] != v}
    assert not clashes, f"unit value vs the example's (the example wins): {clashes}"
