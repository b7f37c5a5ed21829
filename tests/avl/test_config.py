"""Settings: environment over TOML over defaults, one-line errors naming the setting, all documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from avl.config import ConfigError, load_settings, redact_url, settings_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("AVL_"):
            monkeypatch.delenv(key)


def test_defaults_listen_on_the_reference_servers_ports() -> None:
    s = load_settings()
    assert s.database_url is None
    assert s.port_for("teltonika") == 5027 and s.port_for("gt06") == 5023 and s.port_for("osmand") == 5055
    assert s.port_for("jt808") == 5015 and s.port_for("wialon") == 5039 and s.port_for("startek") == 5222
    assert len(s.protocols) == 22  # every protocol listens by default


def test_environment_overrides_the_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "avl.toml"
    conf.write_text('api_port = 9000\nprotocols = ["gt06", "teltonika"]\n[ports]\ngt06 = 6023\n')
    monkeypatch.setenv("AVL_CONFIG", str(conf))
    s = load_settings()
    assert (s.api_port, s.protocols, s.port_for("gt06")) == (9000, ["gt06", "teltonika"], 6023)
    monkeypatch.setenv("AVL_API_PORT", "9100")
    monkeypatch.setenv("AVL_PROTOCOLS", "calamp, h02")
    s = load_settings()
    assert (s.api_port, s.protocols) == (9100, ["calamp", "h02"])


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("AVL_API_PORT", "eighty", "AVL_API_PORT"),
        ("AVL_API_PORT", "70000", "AVL_API_PORT"),
        ("AVL_PROTOCOLS", "gt06,nosuch", "AVL_PROTOCOLS"),
        ("AVL_PORTS", "{not json", "AVL_PORTS"),
        ("AVL_LOG_LEVEL", "LOUD", "AVL_LOG_LEVEL"),
        ("AVL_NO_SUCH_SETTING_X", "1", "AVL_NO_SUCH_SETTING_X"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_setting(monkeypatch: pytest.MonkeyPatch, key: str, value: str,
                                                         named: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith(named + ":")
    assert "\n" not in str(err.value)


def test_a_mistyped_environment_variable_is_refused_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVL_API_PROT", "9000")  # silently ignored, the API would start on the default port
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == "AVL_API_PROT: unknown setting; did you mean AVL_API_PORT?"


def test_avl_variables_of_the_tests_and_tools_are_not_settings_and_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AVL_CONFIG", "AVL_TEST_DATABASE_URL", "AVL_SOAK_SECONDS", "AVL_FUZZ_EXAMPLES", "AVL_CHROMIUM",
                 "AVL_VECTORS", "AVL_SCHEMATHESIS_SEED", "AVL_PG_BINDIR", "AVL_DOMAIN"):
        monkeypatch.setenv(name, "x" if name != "AVL_CONFIG" else "")
    load_settings()


def test_a_mistyped_key_in_the_toml_file_is_named_as_written_there(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "avl.toml"
    conf.write_text("api_prot = 9000\n")
    monkeypatch.setenv("AVL_CONFIG", str(conf))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == f"{conf}: api_prot: unknown setting; did you mean api_port?"


def test_a_bad_value_in_the_toml_file_is_named_by_its_key_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "avl.toml"
    conf.write_text('api_port = "eighty"\n')
    monkeypatch.setenv("AVL_CONFIG", str(conf))
    with pytest.raises(ConfigError, match=f"^{conf}: api_port: "):
        load_settings()
    monkeypatch.setenv("AVL_API_PORT", "ninety")  # the environment wins, and is named when it is wrong
    with pytest.raises(ConfigError, match="^AVL_API_PORT: "):
        load_settings()


def test_the_data_directory_is_absolute_from_where_avl_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings().data_dir == tmp_path / "var"  # initdb runs from /: a relative path would miss
    monkeypatch.setenv("AVL_DATA_DIR", "data/../state")
    assert load_settings().data_dir == tmp_path / "state"


def test_unreadable_or_invalid_toml_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVL_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="^AVL_CONFIG: cannot read"):
        load_settings()
    bad = tmp_path / "bad.toml"
    bad.write_text("api_port = = 1")
    monkeypatch.setenv("AVL_CONFIG", str(bad))
    with pytest.raises(ConfigError, match="^AVL_CONFIG: .* not valid TOML"):
        load_settings()


def test_passwords_are_redacted_from_urls() -> None:
    assert redact_url("postgresql://avl:s3cret@db:5432/avl") == "postgresql://avl:***@db:5432/avl"
    assert "s3cret" not in repr(load_settings(smpp_password="s3cret"))


def test_readme_documents_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert settings_table() in readme, "README configuration table is stale: run scripts/readme-settings"
