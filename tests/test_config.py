"""Gateway config: defaults, precedence, relative paths, located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_minimal_file_takes_defaults_and_resolves_paths(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "broker:\n  protocol: 5\nstore: sqlite:///data/gw.sqlite\n"), environ={}
    )
    assert cfg.broker.protocol == "5"
    assert cfg.input.topic == "vehicles/+/telemetry"
    assert cfg.keys == str(tmp_path / "keys")
    assert cfg.store == f"sqlite:///{tmp_path}/data/gw.sqlite"


def test_protocol_must_be_stated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "broker:\n  url: mqtt://h\n"), environ={})
    assert (
        str(err.value) == f"{tmp_path / 'gateway.yaml'}:1: broker.protocol: required field missing"
    )


def test_every_problem_is_listed_with_its_line(tmp_path: Path) -> None:
    text = "worker: gw-1\nbroker:\n  protocol: '4'\ninput:\n  queue_bound: 0\n  colour: red\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    lines = str(err.value).splitlines()
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in lines] == ["3", "5", "6"]
    assert "broker.protocol" in lines[0]
    assert "input.queue_bound" in lines[1]
    assert lines[2].endswith("input.colour: unknown field")


def test_environment_then_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "broker:\n  protocol: '3.1.1'\n  url: mqtt://file\nworker: from-file\n")
    env = {"ICVGW_BROKER_URL": "mqtt://env", "ICVGW_WORKER": "from-env"}
    cfg = load_config(path, environ=env, overrides={("worker",): "from-flag"})
    assert cfg.broker.url == "mqtt://env"
    assert cfg.worker == "from-flag"
    assert cfg.broker.protocol == "3.1.1"


def test_password_comes_from_the_named_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_MQTT_PASSWORD", "pw")
    text = "broker:\n  protocol: 5\n  username: gw\n  password_env: GW_MQTT_PASSWORD\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.broker_password() == "pw"


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gateway.yaml:3: YAML syntax error"):
        load_config(write(tmp_path, "broker:\n  protocol: [5\n"), environ={})


def test_the_shipped_example_config_loads() -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "gateway.yaml"
    cfg = load_config(example, environ={})
    assert cfg.worker == "gw-1"
    assert cfg.broker.protocol == "5"
    assert cfg.policies is None
    # From a checkout: `icvgw keys init --out keys` at the root, then --config deploy/...
    root = example.parent.parent
    assert cfg.keys == str(root / "keys")
    assert cfg.store == f"sqlite:///{root / 'icvgw.sqlite'}"


def test_paths_in_the_file_are_relative_to_it_and_flags_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "gw.yaml"
    path.write_text("broker: {protocol: 5}\nkeys: ../k\nstore: sqlite:///s.db\n")
    monkeypatch.chdir(tmp_path / "etc")  # not the file's directory's parent
    cfg = load_config(path, environ={})
    assert (cfg.keys, cfg.store) == (str(tmp_path / "k"), f"sqlite:///{tmp_path / 'etc/s.db'}")
    cfg = load_config(path, environ={"ICVGW_KEYS": "k2"}, overrides={("store",): "sqlite:///x"})
    assert (cfg.keys, cfg.store) == ("k2", "sqlite:///x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("  ca_file: ca.pem\n", "ca_file, cert_file and key_file need an mqtts:// url"),
        ("  url: mqtts://h\n  key_file: c.key\n", "key_file needs cert_file"),
        ("  password_env: PW\n", "password_env needs a username"),
    ],
)
def test_a_broker_setting_that_would_be_ignored_is_an_error(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, "broker:\n  protocol: 5\n" + text), environ={})


def test_a_username_in_the_url_takes_the_password_from_password_env(tmp_path: Path) -> None:
    text = "broker:\n  protocol: 5\n  url: mqtt://gw@h\n  password_env: PW\n"
    assert load_config(write(tmp_path, text), environ={}).broker.password_env == "PW"


def test_each_environment_variable_overrides_its_setting() -> None:
    env = {
        "ICVGW_WORKER": "gw-env",
        "ICVGW_BROKER_URL": "mqtt://env:1884",
        "ICVGW_BROKER_PROTOCOL": "3.1.1",
        "ICVGW_POLICIES": "/etc/icvgw/policies",
        "ICVGW_STORE": "postgresql://db/icvgw",
        "ICVGW_KEYS": "/etc/icvgw/keys",
        "ICVGW_INPUT_TOPIC": "fleet/+/telemetry",
        "ICVGW_INPUT_GROUP": "gateways",
    }
    cfg = load_config(None, environ=env)
    seen = (
        cfg.worker,
        cfg.broker.url,
        cfg.broker.protocol,
        cfg.policies,
        cfg.store,
        cfg.keys,
        cfg.input.topic,
        cfg.input.group,
    )
    assert seen == tuple(env.values())


def test_empty_and_unknown_environment_variables_change_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "broker:\n  protocol: 5\nworker: from-file\n")
    env = {
        "ICVGW_WORKER": "",
        "ICVGW_INPUT_GROUP": "",
        "ICVGW_BROKER": "not a setting",
        "ICVGW_INPUT": '{"topic": "a/b"}',
        "ICVGW_INPUT_QUEUE_BOUND": "5",
        "ICVGW_BROKER_PASSWORD_ENV": "PW",
        "ICVGW_TEST_POSTGRES_URL": "postgresql://elsewhere",
    }
    assert load_config(path, environ=env) == load_config(path, environ={})


def test_a_bad_broker_url_is_refused_where_it_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, "broker:\n  protocol: 5\n  url: mqtt://127.0.0.1:99999\n")
    with pytest.raises(ConfigError, match=r"gateway.yaml:3: broker.url: .*bad port '99999'"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"broker.url: .*bad port 'abc'"):
        load_config(
            None, overrides={("broker", "protocol"): "5", ("broker", "url"): "mqtt://h:abc"}
        )
