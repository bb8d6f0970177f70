"""Settings from a given env mapping (never os.environ): defaults, keys, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.settings import SettingsError, load_config

SECRETS = ("sk-live-AAAA1111", "sk-live-BBBB2222", "sk-live-CCCC3333", "gsk_DDDD4444", "local-EEEE5555")


def settings_error(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        load_config(env)
    return str(info.value)


def models_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "modelsconfig.yml"
    path.write_text(text)
    return str(path)


def test_an_empty_env_gives_the_documented_defaults() -> None:
    config = load_config({"AIBROKER_DATA_DIR": "/srv/log"})
    assert config.data_dir == Path("/srv/log")
    assert config.providers == ()
    assert (config.routing_strategy, config.max_attempts, config.max_body_bytes) == ("cheapest", 3, 4 * 1024 * 1024)
    assert (config.connect_timeout_s, config.default_context, config.upstream_client) == (5.0, "0", "aiohttp")
    assert config.trusted_proxies == ("127.0.0.1/32", "::1/128")
    assert config.allowed_contexts is None and config.ipv6_bucket_prefix is None


def test_good_values_are_read() -> None:
    config = load_config({"ROUTING_STRATEGY": "fastest", "MAX_ATTEMPTS": "5", "UPSTREAM_CONNECT_TIMEOUT_S": "2.5",
                          "MAX_BODY_BYTES": "2048", "ALLOWED_CONTEXTS": "a, b,,c", "IPV6_BUCKET_PREFIX": "64",
                          "TRUSTED_PROXIES": "10.0.0.0/8,::1/128"})
    assert (config.routing_strategy, config.max_attempts, config.connect_timeout_s) == ("fastest", 5, 2.5)
    assert config.max_body_bytes == 2048
    assert config.allowed_contexts == frozenset({"a", "b", "c"})
    assert config.ipv6_bucket_prefix == 64
    assert config.trusted_proxies == ("10.0.0.0/8", "::1/128")


@pytest.mark.parametrize(("name", "value", "says"), [
    ("ROUTING_STRATEGY", "random", "must be one of cheapest, fastest"),
    ("ROUTING_STRATEGY", "", "must be one of"),
    ("MAX_ATTEMPTS", "0", "must be an integer >= 1"),
    ("MAX_ATTEMPTS", "-1", "must be an integer >= 1"),
    ("MAX_ATTEMPTS", "three", "must be an integer >= 1"),
    ("MAX_ATTEMPTS", "2.5", "must be an integer >= 1"),
    ("UPSTREAM_CONNECT_TIMEOUT_S", "soon", "is not a number"),
    ("UPSTREAM_CONNECT_TIMEOUT_S", "0", "must be >= 0.1"),
    ("UPSTREAM_CONNECT_TIMEOUT_S", "-5", "must be >= 0.1"),
    ("UPSTREAM_FIRST_BYTE_TIMEOUT_S", "x", "is not a number"),
    ("MAX_BODY_BYTES", "100", "must be an integer >= 1024"),
    ("MAX_BODY_BYTES", "4MB", "must be an integer >= 1024"),
    ("UPSTREAM_CLIENT", "requests", "must be aiohttp or httpx"),
    ("CATALOG_REFRESH_S", "0.5", "must be >= 1"),
])
def test_a_bad_setting_names_the_variable_its_value_and_the_rule(name: str, value: str, says: str) -> None:
    message = settings_error({name: value})
    assert message.startswith(f"{name}={value!r}")
    assert says in message


def slipping(name: str, value: str, bug: str) -> object:
    return pytest.param(name, value, id=f"{name}={value}")


@pytest.mark.parametrize(("name", "value"), [
    slipping("MAX_ATTEMPTS", "²", "deploy/settings.py _int checks str.isdigit(), which accepts '²'; int() then "
                                  "raises a bare ValueError that does not name MAX_ATTEMPTS; use isdecimal()"),
    slipping("UPSTREAM_CONNECT_TIMEOUT_S", "nan", "deploy/settings.py _float accepts 'nan' (nan < minimum is "
                                                  "False), so a NaN timeout reaches the upstream client; "
                                                  "require math.isfinite"),
    slipping("UPSTREAM_IDLE_TIMEOUT_S", "inf", "deploy/settings.py _float accepts 'inf'; require math.isfinite"),
    slipping("TRUSTED_PROXIES", "10.0.0.0/33", "deploy/settings.py keeps TRUSTED_PROXIES as unchecked strings; a "
                                               "bad CIDR passes load_config, the server prints that it is serving "
                                               "and then dies in the lifespan (BrokerState -> parse_networks "
                                               "ValueError, exit 3) without naming the variable; parse it here"),
    slipping("DEFAULT_CONTEXT", "bad context", "deploy/settings.py does not check DEFAULT_CONTEXT against "
                                               "[A-Za-z0-9_-]{1,64}; every request without X-Hero-Context then "
                                               "fails the log's event validation (ValidationError at "
                                               "$.context): a 500 for every such request"),
    slipping("IPV6_BUCKET_PREFIX", "129", "deploy/settings.py has no upper bound for IPV6_BUCKET_PREFIX; "
                                          "domain/identity.py _bucket then raises ValueError for every IPv6 "
                                          "client: a 500 each; require 1..128"),
])
def test_a_bad_setting_that_slips_through_today_is_refused(name: str, value: str) -> None:
    assert settings_error({name: value}).startswith(f"{name}={value!r}")


# ---- modelsconfig.yml ---------------------------------------------------------------------------------


def test_a_missing_models_config_names_the_variable_and_the_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yml")
    message = settings_error({"MODELS_CONFIG_PATH": missing})
    assert message == f"MODELS_CONFIG_PATH={missing!r}: no such file"


def test_bad_yaml_names_the_variable(tmp_path: Path) -> None:
    path = models_file(tmp_path, "models: [unclosed\n")
    message = settings_error({"MODELS_CONFIG_PATH": path})
    assert message.startswith(f"MODELS_CONFIG_PATH={path!r}: not valid YAML")


def test_a_models_config_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = models_file(tmp_path, "- just\n- a list\n")
    assert "the top level must be a mapping" in settings_error({"MODELS_CONFIG_PATH": path})


@pytest.mark.parametrize(("price", "says"), [
    ("'abc'", "'abc' is not a price in USD per 1M tokens"),
    ("-0.5", "-0.5 must be >= 0 with at most 6 decimals"),
    ("0.0000001", "must be >= 0 with at most 6 decimals"),
    ("true", "True is not a price"),
])
def test_a_bad_price_names_the_model_and_field(tmp_path: Path, price: str, says: str) -> None:
    path = models_file(tmp_path, f"models:\n  fakeai/fake-small:\n    input: {price}\n")
    message = settings_error({"MODELS_CONFIG_PATH": path})
    assert "models['fakeai/fake-small'].input" in message
    assert says in message


@pytest.mark.parametrize("price", [".nan", ".inf"])
def test_a_non_finite_price_is_refused_naming_the_model(tmp_path: Path, price: str) -> None:
    path = models_file(tmp_path, f"models:\n  fake-small:\n    output: {price}\n")
    assert "models['fake-small'].output" in settings_error({"MODELS_CONFIG_PATH": path})


def test_good_prices_become_exact_micro_usd_per_million(tmp_path: Path) -> None:
    path = models_file(tmp_path, "models:\n  fakeai/fake-small:\n    input: 0.15\n    output: '0.000001'\n")
    config = load_config({"MODELS_CONFIG_PATH": path})
    assert config.model_overrides == {"fakeai/fake-small": {"input": 150_000, "output": 1}}


# ---- keys ---------------------------------------------------------------------------------------------


def test_a_single_key_enables_its_preset_provider() -> None:
    config = load_config({"OPENAI_API_KEY": SECRETS[0]})
    (openai,) = config.providers
    assert (openai.name, openai.base_url, openai.keys) == ("openai", "https://api.openai.com/v1", (SECRETS[0],))


def test_a_key_pool_is_split_trimmed_and_joined_with_the_single_key() -> None:
    config = load_config({"OPENAI_API_KEY": SECRETS[0], "OPENAI_API_KEYS": f" {SECRETS[1]},,{SECRETS[2]} ",
                          "GROQ_API_KEYS": SECRETS[3]})
    by_name = {p.name: p.keys for p in config.providers}
    assert by_name == {"openai": (SECRETS[0], SECRETS[1], SECRETS[2]), "groq": (SECRETS[3],)}


def test_a_key_in_both_variables_is_used_once() -> None:
    config = load_config({"OPENAI_API_KEY": SECRETS[0], "OPENAI_API_KEYS": f"{SECRETS[1]},{SECRETS[0]}"})
    assert config.providers[0].keys == (SECRETS[1], SECRETS[0])


def test_blank_keys_enable_nothing() -> None:
    assert load_config({"OPENAI_API_KEY": "  ", "GROQ_API_KEYS": " , "}).providers == ()


def test_a_custom_provider_takes_its_keys_from_its_key_env(tmp_path: Path) -> None:
    path = models_file(tmp_path, "providers:\n  local:\n    base_url: http://127.0.0.1:11434/v1\n"
                                 "    key_env: OLLAMA_API_KEY\n  keyless:\n    base_url: http://127.0.0.1:8000/v1\n"
                                 "    keyless: true\n")
    config = load_config({"MODELS_CONFIG_PATH": path, "OLLAMA_API_KEY": SECRETS[4]})
    by_name = {p.name: p.keys for p in config.providers}
    assert by_name == {"local": (SECRETS[4],), "keyless": ("none",)}


def test_no_repr_of_the_config_shows_a_key(tmp_path: Path) -> None:
    path = models_file(tmp_path, "providers:\n  local:\n    base_url: http://127.0.0.1:11434/v1\n"
                                 "    key_env: OLLAMA_API_KEY\n")
    config = load_config({"MODELS_CONFIG_PATH": path, "OPENAI_API_KEY": SECRETS[0],
                          "OPENAI_API_KEYS": f"{SECRETS[1]},{SECRETS[2]}", "GROQ_API_KEY": SECRETS[3],
                          "OLLAMA_API_KEY": SECRETS[4]})
    assert len(config.providers) == 3
    shown = " ".join([repr(config), str(config), repr(config.providers), *map(str, config.providers),
                      f"{config!r:}", f"{config.providers[0]}"])
    assert "masked" in shown
    for secret in SECRETS:
        assert secret not in shown
