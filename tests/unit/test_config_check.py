"""`aibroker config check`: the settings in force as JSON, secrets masked; a bad one exits 2 naming it.

Run as the operator runs it (a subprocess with only the given environment). Every run carries
distinctive keys and an admin token, and none of them may ever reach stdout or stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 30.0
SECRETS = {
    "OPENAI_API_KEY": "sk-check-OPENAI-single-1a2b",
    "OPENAI_API_KEYS": "sk-check-OPENAI-pool-3c4d,sk-check-OPENAI-pool-5e6f",
    "GROQ_API_KEYS": "gsk-check-GROQ-7a8b",
    "LOCALAI_API_KEY": "local-check-LOCALAI-9c0d",
    "ADMIN_TOKEN": "adm-check-TOKEN-e1f2",
}
SECRET_VALUES = [v for value in SECRETS.values() for v in value.split(",")]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("aibroker")
    found = str(script) if script.exists() else shutil.which("aibroker")
    return [found, "config", "check"] if found else [sys.executable, "-m", "deploy.cli", "config", "check"]


def check(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`aibroker config check` with exactly `env` (plus PATH/HOME), the secrets always set."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "SYSTEMROOT") if k in os.environ}
    full = {**base, "PYTHONPATH": str(REPO_ROOT), "AIBROKER_DATA_DIR": str(tmp_path / "data"), **SECRETS, **env}
    done = subprocess.run(_command(), cwd=tmp_path, env=full, capture_output=True, text=True, timeout=TIMEOUT_S)
    for secret in SECRET_VALUES:
        assert secret not in done.stdout and secret not in done.stderr, f"a secret was printed: {done}"
    return done


def models_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "modelsconfig.yml"
    path.write_text(text)
    return str(path)


CUSTOM = """\
providers:
  localai: {base_url: "http://127.0.0.1:11434/v1", key_env: LOCALAI_API_KEY}
models:
  fakeai/fake-small: {input: "0.10", output: "0.40", context_window: 8192}
limits:
  default: {requests_per_min: 600}
  contexts:
    team-a: {budget_daily_usd: "2.50", concurrent: 4}
"""


def test_a_good_config_prints_json_with_every_secret_masked(tmp_path: Path) -> None:
    done = check({"MODELS_CONFIG_PATH": models_file(tmp_path, CUSTOM), "ROUTING_STRATEGY": "fastest",
                  "SOCKET_MODE": "0640", "HERO_SOCKET_DIR": str(tmp_path / "sockets")}, tmp_path)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    providers = {p["name"]: p for p in config["providers"]}
    assert sorted(providers) == ["groq", "localai", "openai"]
    assert providers["openai"]["keys"] == "<3 set, masked>"  # the single key and the pool of two
    assert providers["groq"]["keys"] == "<1 set, masked>"
    assert providers["localai"] == {"name": "localai", "base_url": "http://127.0.0.1:11434/v1",
                                    "keys": "<1 set, masked>", "key_env": "LOCALAI_API_KEY"}
    assert config["admin_token"] == "<set, masked>"
    assert config["routing_strategy"] == "fastest"
    assert config["socket_mode"] == "0o640"
    assert config["socket_dir"] == str(tmp_path / "sockets" / "hero_aibroker")
    assert config["data_dir"] == str(tmp_path / "data")
    assert config["model_overrides"]["fakeai/fake-small"] == {"input": 100_000, "output": 400_000,
                                                              "context_window": 8192}
    assert config["limits"]["contexts"]["team-a"] == {"budget_daily_usd": "2.50", "concurrent": 4}
    assert config["models_config_path"] == str(tmp_path / "modelsconfig.yml")


def test_no_admin_token_is_reported_as_not_set(tmp_path: Path) -> None:
    done = check({"ADMIN_TOKEN": ""}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["admin_token"] == "<not set>"


BAD_ENV = [
    ("ROUTING_STRATEGY", "random", "must be one of cheapest, fastest"),
    ("MAX_ATTEMPTS", "0", "must be an integer >= 1"),
    ("MAX_ATTEMPTS", "three", "must be an integer >= 1"),
    ("UPSTREAM_CONNECT_TIMEOUT_S", "soon", "is not a number"),
    ("UPSTREAM_CONNECT_TIMEOUT_S", "0", "must be >= 0.1"),
    ("UPSTREAM_FIRST_BYTE_TIMEOUT_S", "-1", "must be >= 0.1"),
    ("UPSTREAM_FIRST_BYTE_TIMEOUT_S", "nan", "must be >= 0.1"),
    ("UPSTREAM_IDLE_TIMEOUT_S", "inf", "must be >= 0.1"),
    ("UPSTREAM_IDLE_TIMEOUT_S", "1m", "is not a number"),
    ("MAX_BODY_BYTES", "100", "must be an integer >= 1024"),
    ("MAX_BODY_BYTES", "4MB", "must be an integer >= 1024"),
    ("DEFAULT_CONTEXT", "team a", "must match [A-Za-z0-9_-]{1,64}"),
    ("DEFAULT_CONTEXT", "x" * 65, "must match [A-Za-z0-9_-]{1,64}"),
    ("TRUSTED_PROXIES", "10.0.0.0/8,not-a-cidr", "must be comma-separated CIDRs"),
    ("TRUSTED_PROXIES", "10.0.0.0/33", "must be comma-separated CIDRs"),
    ("IPV6_BUCKET_PREFIX", "129", "must be an integer from 1 to 128"),
    ("IPV6_BUCKET_PREFIX", "0", "must be an integer from 1 to 128"),
    ("UPSTREAM_CLIENT", "requests", "must be aiohttp or httpx"),
    ("LOG_LEVEL", "verbose", "must be one of debug, info, warning, error"),
    ("LOG_FORMAT", "xml", "must be one of json, text"),
    ("SOCKET_MODE", "rw-rw----", "must be an octal file mode like 0660"),
    ("SOCKET_MODE", "0400", "the owner needs rw"),
    ("SOCKET_MODE", "01777", "must be an octal mode from 0600 to 0777"),
    ("SHUTDOWN_GRACE_S", "-1", "must be >= 0"),
    ("SHUTDOWN_GRACE_S", "later", "is not a number"),
    ("CATALOG_REFRESH_S", "0.5", "must be >= 1"),
    ("EXPECTED_OUTPUT_TOKENS", "0", "must be an integer >= 1"),
    ("EXPECTED_OUTPUT_TOKENS", "1e3", "must be an integer >= 1"),
]


@pytest.mark.parametrize(("name", "value", "says"), BAD_ENV, ids=[f"{n}={v[:12]}" for n, v, _ in BAD_ENV])
def test_a_bad_setting_exits_2_naming_it(tmp_path: Path, name: str, value: str, says: str) -> None:
    done = check({name: value}, tmp_path)
    assert done.returncode == 2, done
    assert done.stdout == ""
    message = done.stderr.strip()
    assert message.startswith("aibroker config check: "), message
    assert f"{name}={value!r}" in message and says in message, message
    assert "Traceback" not in done.stderr


BAD_FILES = [
    ("bad-yaml", "limits: {contexts: [unclosed\n", ["MODELS_CONFIG_PATH=", "not valid YAML"]),
    ("not-a-mapping", "- just\n- a list\n", ["MODELS_CONFIG_PATH=", "the top level must be a mapping"]),
    ("negative-limit", "limits:\n  contexts:\n    a: {requests_per_min: -1}\n",
     ["MODELS_CONFIG_PATH", "limits.contexts['a'].requests_per_min must be an integer >= 0 or null"]),
    ("unknown-limit", "limits:\n  default: {requests_per_hour: 5}\n",
     ["MODELS_CONFIG_PATH", "limits.default: unknown setting 'requests_per_hour'"]),
    ("unknown-scope", "limits:\n  users: {}\n", ["MODELS_CONFIG_PATH", "limits: unknown keys ['users']"]),
    ("bad-bucket", "limits:\n  buckets:\n    1.2.3.4: {concurrent: 1}\n",
     ["MODELS_CONFIG_PATH", "a bucket key is 'IP|CONTEXT'"]),
    ("bad-budget", "limits:\n  default: {budget_daily_usd: 'lots'}\n",
     ["MODELS_CONFIG_PATH", "limits.default.budget_daily_usd: 'lots' is not an amount in USD"]),
    ("budget-7-decimals", "limits:\n  default: {budget_monthly_usd: '0.0000001'}\n",
     ["MODELS_CONFIG_PATH", "must be >= 0 with at most 6 decimals"]),
    ("bad-price", "models:\n  fakeai/fake-small: {input: 'cheap'}\n",
     ["modelsconfig.yml models['fakeai/fake-small'].input", "is not a price in USD per 1M tokens"]),
    ("negative-price", "models:\n  fake-small: {output: '-0.5'}\n",
     ["modelsconfig.yml models['fake-small'].output", "must be >= 0 with at most 6 decimals"]),
    ("nan-price", "models:\n  fake-small: {cached: .nan}\n",
     ["modelsconfig.yml models['fake-small'].cached", "must be >= 0"]),
    ("provider-without-url", "providers:\n  localai: {key_env: LOCALAI_API_KEY}\n",
     ["modelsconfig.yml providers['localai'] needs a 'base_url' string"]),
]


@pytest.mark.parametrize(("text", "says"), [(t, s) for _, t, s in BAD_FILES], ids=[i for i, _, _ in BAD_FILES])
def test_a_bad_models_config_exits_2_naming_it(tmp_path: Path, text: str, says: list[str]) -> None:
    done = check({"MODELS_CONFIG_PATH": models_file(tmp_path, text)}, tmp_path)
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert done.stderr.startswith("aibroker config check: "), done.stderr
    assert all(part in done.stderr for part in says), done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_models_config_exits_2_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "modelsconfig.yml"
    done = check({"MODELS_CONFIG_PATH": str(missing)}, tmp_path)
    assert done.returncode == 2, done
    assert done.stderr.strip() == f"aibroker config check: MODELS_CONFIG_PATH={str(missing)!r}: no such file"


# ---- what `config check` passes but the broker cannot run with ------------------------------------

SHAPE_CRASH = (
    "BUG: domain/limits.py settings_from_config assumes `limits:` and its `contexts:`/`ips:`/`buckets:` are "
    "mappings (doc.get / .items() raise AttributeError on a list or string), and usd_to_micros has no "
    "finiteness check (Decimal('NaN') < 0 raises InvalidOperation, int(Decimal('Infinity')) OverflowError); "
    "deploy/settings.load_config only turns ValueError into SettingsError, so `config check` (and `serve`) "
    "die with a traceback and exit 1. Fix: check the shapes in settings_from_config (raise ValueError naming "
    "the key) and reject non-finite amounts in usd_to_micros (as deploy/settings.usd_per_mtok does)")
UNCHECKED_OVERRIDES = (
    "BUG: deploy/settings._overrides converts prices but never runs domain.catalog.check_spec, so `config check` "
    "exits 0 for a model override with an unknown field or a bad context_window/kind/flag, and `aibroker serve` "
    "then dies at start with a ValueError traceback from build_catalog. Fix: check_spec each override in "
    "_overrides and raise SettingsError naming modelsconfig.yml models[key]")
NULL_BUDGET = (
    "BUG: domain/limits.py _settings sends `budget_daily_usd: null` / `budget_monthly_usd: null` to "
    "usd_to_micros (\"None is not an amount in USD\") although null means 'no limit' in modelsconfig.yml "
    "(PolicyBook.set none_means_unlimited; `budget_daily_micros: null` is accepted). Fix: pass None through")


@pytest.mark.parametrize(("text", "key"), [
    ("limits: [1, 2]\n", "limits"),
    ("limits: {contexts: [team-a]}\n", "contexts"),
    ("limits:\n  contexts:\n    a: {budget_daily_usd: .nan}\n", "budget_daily_usd"),
    ("limits:\n  default: {budget_monthly_usd: Infinity}\n", "budget_monthly_usd"),
], ids=["limits-list", "contexts-list", "nan-budget", "infinite-budget"])
def test_a_malformed_limits_section_exits_2_not_a_traceback(tmp_path: Path, text: str, key: str) -> None:
    done = check({"MODELS_CONFIG_PATH": models_file(tmp_path, text)}, tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done
    assert "MODELS_CONFIG_PATH" in done.stderr and key in done.stderr, done.stderr


@pytest.mark.parametrize(("text", "says"), [
    ("models:\n  fakeai/fake-small: {context_window: big}\n", "'context_window' must be an integer > 0"),
    ("models:\n  fake-small: {contex_window: 4096}\n", "unknown field 'contex_window'"),
    ("models:\n  fake-small: {kind: video}\n", "'kind' must be one of"),
    ("models:\n  fake-small: {tools: 'yes'}\n", "'tools' must be true or false"),
], ids=["context-window", "typo-field", "kind", "flag"])
def test_a_bad_model_override_exits_2(tmp_path: Path, text: str, says: str) -> None:
    done = check({"MODELS_CONFIG_PATH": models_file(tmp_path, text)}, tmp_path)
    assert done.returncode == 2, done
    assert "modelsconfig.yml models[" in done.stderr and says in done.stderr, done.stderr


def test_a_null_budget_means_no_budget(tmp_path: Path) -> None:
    text = "limits:\n  default: {budget_daily_usd: '1.00'}\n  contexts:\n    ops: {budget_daily_usd: null}\n"
    done = check({"MODELS_CONFIG_PATH": models_file(tmp_path, text)}, tmp_path)
    assert done.returncode == 0, done.stderr
