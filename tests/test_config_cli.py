"""Settings loading and the CLI's exit-code contract (DESIGN §3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillguard.cli import build_parser, main
from distillguard.config import load_settings
from distillguard.exceptions import ConfigError


def test_contract_keys_load_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "dg.yaml"
    path.write_text(
        'listen: "127.0.0.1:9000"\n'
        'database: "sqlite:///x.db"\n'
        'admin_token: "t0ken"\n'
        "upstreams:\n"
        "  - name: local\n"
        '    base_url: "http://127.0.0.1:8701/v1/"\n'
        "    protocol: openai\n"
        "    api_key: null\n"
        '    models: ["*"]\n'
    )
    settings = load_settings(path)
    assert settings.listen_port == 9000
    assert settings.admin_token == "t0ken"
    assert settings.upstreams[0].base_url == "http://127.0.0.1:8701/v1"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dg.yaml"
    path.write_text('admin_token: "from-file"\n')
    monkeypatch.setenv("DG_ADMIN_TOKEN", "from-env")
    monkeypatch.setenv("DG_LIMITS__REQUESTS_PER_MIN", "7")
    settings = load_settings(path)
    assert settings.admin_token == "from-env"
    assert settings.limits.requests_per_min == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("upstreams:\n  - name: x\n    base_url: http://a\n    protocol: grpc\n", "upstreams.0.protocol"),
        ("listen: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
        ("no_such_key: 1\n", "no_such_key"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as info:
        load_settings(path)
    assert expected in str(info.value)


def test_every_contract_command_parses() -> None:
    parser = build_parser()
    for argv in (
        ["serve", "--config", "x.yaml"],
        ["demo", "--no-wait"],
        ["accounts", "create", "alice", "--org", "acme", "--json"],
        ["accounts", "list", "--json"],
        ["keys", "create", "acct_1", "--json"],
        ["keys", "revoke", "key_1"],
        ["scan", "a.jsonl", "b.jsonl.gz", "--out", "r.json"],
        ["simulate", "--scenario", "small", "--seed", "1", "--out", "e.jsonl.gz", "--labels", "l.json"],
        ["eval", "--events", "e.jsonl.gz", "--labels", "l.json"],
        ["watermark", "detect", "--text-file", "f.txt", "--key-id", "global", "--key-id", "org:1"],
        ["events", "export", "--since", "2026-01-01T00:00:00Z"],
    ):
        args = parser.parse_args(argv)
        assert ":" in args.handler


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["accounts", "list", "--config", "/nonexistent/dg.yaml"])
    assert code == 2
    assert "config file not found" in capsys.readouterr().err


def test_commands_that_read_no_settings_still_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DESIGN §7: every command takes --config. One that reads nothing from it must not ignore it silently."""
    events = tmp_path / "events.jsonl"
    events.write_text("")
    assert main(["scan", str(events), "--out", str(tmp_path / "r.json"), "--config", "/nonexistent/dg.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
    config = tmp_path / "dg.yaml"
    config.write_text("listen: 127.0.0.1:9999\n")
    assert main(["scan", str(events), "--out", str(tmp_path / "r.json"), "--config", str(config)]) == 0
    assert "reads no settings from it" in capsys.readouterr().err


# -- strictness at every depth (issue #12: misspelt nested keys were silently ignored) -----------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("limits:\n  request_per_min: 5\n", "limits.request_per_min: unknown key (did you mean requests_per_min?)"),
        ("detection:\n  block_enable: true\n", "detection.block_enable: unknown key (did you mean block_enabled?)"),
        ("watermark:\n  enable: true\n", "watermark.enable: unknown key (did you mean enabled?)"),
        ("privacy:\n  ip_mod: hash\n", "privacy.ip_mod: unknown key (did you mean ip_mode?)"),
        ("upstreams:\n  - name: a\n    base_url: http://a\n    api_kye: x\n", "upstreams.0.api_kye: unknown key (did you mean api_key?)"),
        ("listen: localhost\n", "listen: expected HOST:PORT"),
        ("listen: '127.0.0.1:80800'\n", "listen: port must be a number from 1 to 65535"),
        ("listen: '127.0.0.1:0'\n", "listen: port must be a number from 1 to 65535"),
        ("listen: '::1:8700'\n", "listen: an IPv6 address needs brackets"),
        ("admin_listen: '127.0.0.1'\n", "admin_listen: expected HOST:PORT"),
    ],
)
def test_nested_unknown_keys_and_bad_listen_exit_2_naming_the_path(tmp_path: Path, text: str, expected: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dg.yaml"
    path.write_text(text)
    assert main(["accounts", "list", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {expected}" in err
    assert err.count("\n") == 1  # one line


def test_listen_forms_that_are_valid() -> None:
    assert load_settings(None, listen="[::1]:8700").listen_host == "::1"
    settings = load_settings(None, listen="0.0.0.0:65535", admin_listen="127.0.0.1:9000")
    assert (settings.listen_host, settings.listen_port, settings.admin_listen) == ("0.0.0.0", 65535, "127.0.0.1:9000")


def test_environment_errors_name_the_variable_not_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dg.yaml"
    path.write_text("admin_token: x\n")
    monkeypatch.setenv("DG_LIMITS__REQUESTS_PER_MIN", "lots")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith("environment variable DG_LIMITS__REQUESTS_PER_MIN: limits.requests_per_min:")
    monkeypatch.delenv("DG_LIMITS__REQUESTS_PER_MIN")
    monkeypatch.setenv("DG_LIMITS__REQUEST_PER_MIN", "5")
    with pytest.raises(ConfigError, match=r"^environment variable DG_LIMITS__REQUEST_PER_MIN: .*did you mean requests_per_min"):
        load_settings(path)
    monkeypatch.delenv("DG_LIMITS__REQUEST_PER_MIN")
    monkeypatch.setenv("DG_UPSTREAMS", "[not json")
    with pytest.raises(ConfigError, match=r"^environment variable DG_UPSTREAMS: not valid JSON"):
        load_settings(path)


def test_secrets_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dg.yaml"
    path.write_text(
        "admin_token: ${DG_TEST_ADMIN}\n"
        "database: postgresql://dg:${DG_TEST_PGPASS}@db/dg\n"
        "privacy:\n  hash_key: $${NOT_A_REFERENCE}\n"
        "upstreams:\n"
        "  - name: a\n    base_url: http://a/v1\n    api_key: ${DG_TEST_OPENAI_KEY}\n"
        "  - name: b\n    base_url: http://b/v1\n    api_key: os.environ/DG_TEST_OTHER_KEY\n"
    )
    monkeypatch.setenv("DG_TEST_ADMIN", "tok")
    monkeypatch.setenv("DG_TEST_PGPASS", "pw")
    monkeypatch.setenv("DG_TEST_OPENAI_KEY", "sk-one")
    monkeypatch.setenv("DG_TEST_OTHER_KEY", "sk-two")
    settings = load_settings(path)
    assert settings.admin_token == "tok"
    assert settings.database == "postgresql://dg:pw@db/dg"
    assert settings.privacy.hash_key == "${NOT_A_REFERENCE}"
    assert [u.api_key for u in settings.upstreams] == ["sk-one", "sk-two"]
    monkeypatch.delenv("DG_TEST_OTHER_KEY")
    with pytest.raises(ConfigError, match=r"upstreams\.1\.api_key: environment variable DG_TEST_OTHER_KEY is not set"):
        load_settings(path)


def test_commands_say_when_they_would_create_a_new_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DG_CONFIG", raising=False)
    monkeypatch.delenv("DG_DATABASE", raising=False)
    assert main(["accounts", "list"]) == 0
    err = capsys.readouterr().err
    assert "no configuration file (--config or DG_CONFIG)" in err
    assert f"will be created as {tmp_path / 'distillguard.db'}" in err
    assert main(["accounts", "list"]) == 0  # now it exists: nothing to say
    assert capsys.readouterr().err == ""


def test_watermark_detect_warns_about_the_default_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DG_CONFIG", raising=False)
    text = tmp_path / "t.txt"
    text.write_text("The answer is forty-two. " * 20)
    assert main(["watermark", "detect", "--text-file", str(text)]) == 0
    assert "default watermark.master_secret" in capsys.readouterr().err
    config = tmp_path / "dg.yaml"
    config.write_text("watermark:\n  master_secret: a-real-one\n")
    assert main(["watermark", "detect", "--text-file", str(text), "--config", str(config)]) == 0
    assert "default watermark.master_secret" not in capsys.readouterr().err


def test_logit_bias_marking_without_a_tokenizer_is_a_config_error(tmp_path: Path) -> None:
    """docs/watermark.md: such an upstream was silently not marked; now the configuration says so."""
    path = tmp_path / "dg.yaml"
    path.write_text("upstreams:\n  - name: a\n    base_url: http://a/v1\n    watermark: logit_bias\n")
    with pytest.raises(ConfigError, match=r"upstreams\.0: watermark: logit_bias needs `tokenizer`"):
        load_settings(path)
    path.write_text("upstreams:\n  - name: a\n    base_url: http://a/v1\n    protocol: anthropic\n    watermark: logit_bias\n")
    assert load_settings(path).upstreams[0].watermark == "logit_bias"  # ignored with a warning at start: no logit_bias there
