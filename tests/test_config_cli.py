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
