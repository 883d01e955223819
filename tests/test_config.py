"""config.toml: defaults, validation messages that name file and key, path resolution."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.cli import main
from daemon.config import Config, ConfigError, find_config, load_config

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_documented_config_is_the_embedded_default(tmp_path: Path) -> None:
    """Every key in config.toml exists, with the value the code uses when it is absent."""
    shipped = load_config(REPO / "config.toml")
    empty = load_config(_write(tmp_path, ""))
    for section in ("mast", "archive", "executor", "lambda_", "schedule", "log"):
        # bundle is a path, resolved against each file's own folder
        a = getattr(shipped, section).model_dump(exclude={"bundle"})
        assert a == getattr(empty, section).model_dump(exclude={"bundle"}), section
    assert Path(shipped.lambda_.bundle) == REPO / "build" / "mastmirror-sep.zip"
    assert shipped.sep == empty.sep
    raw = tomllib.loads((REPO / "config.toml").read_text())
    for section, keys in raw.items():
        model = Config.model_fields["lambda_" if section == "lambda" else section].annotation
        if section != "sep":
            assert set(keys) == set(model.model_fields), section  # every key documented


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    cfg = load_config(_write(tmp_path / "etc", '[state]\npath = "db/m.db"\n'
                                               '[output]\nurl = "../cats"\n'))
    assert cfg.state_path == tmp_path / "etc" / "db" / "m.db"
    assert cfg.output_url == f"file://{tmp_path / 'cats'}"
    assert Path(cfg.lambda_.bundle).is_absolute()


def test_index_url_is_a_store_url_or_off(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")).index_url == f"file://{tmp_path / 'index'}"
    assert load_config(_write(tmp_path, '[index]\nurl = ""\n')).index_url is None
    s3 = load_config(_write(tmp_path, '[index]\nurl = "s3://my-cats/index/"\n'))
    assert s3.index_url == "s3://my-cats/index"
    with pytest.raises(ConfigError, match=r"\[index\] url = 'ftp://x': expected a directory"):
        load_config(_write(tmp_path, '[index]\nurl = "ftp://x"\n'))


def test_output_urls(tmp_path: Path) -> None:
    s3 = load_config(_write(tmp_path, '[output]\nurl = "s3://my-cats/mirror/v1/"\n'))
    assert s3.output_url == "s3://my-cats/mirror/v1"
    f = load_config(_write(tmp_path, '[output]\nurl = "file:///srv/cats"\n'))
    assert f.output_url == "file:///srv/cats"


@pytest.mark.parametrize(("text", "expected"), [
    ("[executor]\nconcurrency = -1\n",
     "[executor] concurrency = -1: input should be greater than or equal to 1"),
    ("[executor]\nconcurrency = \"2\"\n",
     "[executor] concurrency = '2': input should be a valid integer"),
    ("[executor]\nkind = \"kubernetes\"\n",
     "[executor] kind = 'kubernetes': input should be 'local' or 'lambda'"),
    ("[executor]\nconcurency = 2\n",
     "[executor] concurency: unknown key; expected one of: kind, concurrency"),
    ("[mast]\nurl = \"mast.stsci.edu\"\n",
     "[mast] url = 'mast.stsci.edu': must be an http:// or https:// URL"),
    ("[mast]\nsince = \"yesterday\"\n", "[mast] since = 'yesterday': input should be a valid"),
    ("[output]\nurl = \"ftp://x/y\"\n", "[output] url = 'ftp://x/y': expected a directory"),
    ("[output]\nurl = \"s3://Bad_Bucket/p\"\n", "is not a valid S3 bucket name"),
    ("[archive]\nbucket = \"no/slashes\"\n", "[archive] bucket = 'no/slashes': must be an S3"),
    ("[schedule]\npoll_minutes = 0\n", "[schedule] poll_minutes = 0: input should be greater"),
    ("[schedule]\nrefresh_per_hour = -1\n", "[schedule] refresh_per_hour = -1: input should be"),
    ("[archive]\nnotifications = \"arn:aws:sns:us-east-1:879230861493:stpubdata\"\n",
     "[archive] notifications = 'arn:aws:sns:us-east-1:879230861493:stpubdata': must be \"\" "
     "(off) or an SQS queue URL"),
    ("[archive]\nanonymous = \"yes\"\n", "[archive] anonymous = 'yes': input should be a valid"),
    ("[executor]\nfunction = \"bad name!\"\n", "[executor] function = 'bad name!'"),
    ("[nonsense]\nx = 1\n", "unknown section [nonsense]"),
    ("mast = 3\n", "[mast] must be a table"),
    ("[mast\nurl = 1\n", "not valid TOML"),
    ("[sep]\nno_such_parameter = 1\n", "[sep] "),
])
def test_bad_lines_are_named_with_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "[executor]\nconcurrency = 0\nmax_attempts = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "concurrency = 0" in str(err.value) and "max_attempts = 0" in str(err.value)


def test_cli_exits_non_zero_with_the_message(tmp_path: Path) -> None:
    path = _write(tmp_path, "[executor]\nconcurrency = -1\n")
    result = CliRunner().invoke(main, ["--config", str(path), "retry"])
    assert result.exit_code == 2
    assert f"mastmirror: error: {path}: [executor] concurrency = -1" in result.output


def test_status_reads_only_the_state_path(tmp_path: Path) -> None:
    """status starts fast: it checks [state] path alone (the daemon checks the rest)."""
    path = _write(tmp_path, "[executor]\nconcurrency = -1\n[state]\npath = 'db/x.db'\n")
    result = CliRunner().invoke(main, ["--config", str(path), "status"])
    assert result.exit_code == 1  # the file is usable for status: there is no database yet
    assert f"{tmp_path / 'db' / 'x.db'}: no state database here" in result.output
    path = _write(tmp_path, "[state]\npath = 3\n")
    result = CliRunner().invoke(main, ["--config", str(path), "status"])
    assert result.exit_code == 2
    assert f"mastmirror: error: {path}: [state] path = 3: expected a non-empty string" in \
        result.output


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = CliRunner().invoke(main, ["--config", str(missing), "status"])
    assert result.exit_code == 2
    assert f"{missing}: config file not found" in result.output


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_cfg = tmp_path / "env.toml"
    env_cfg.write_text("")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    assert find_config(None, {"MASTMIRROR_CONFIG": str(env_cfg)}, cwd=cwd) == env_cfg
    (cwd / "config.toml").write_text("")
    assert find_config(None, {"MASTMIRROR_CONFIG": str(env_cfg)}, cwd=cwd) == cwd / "config.toml"
    with pytest.raises(ConfigError, match="no config file found"):
        find_config(None, {}, cwd=tmp_path / "empty")


def test_log_retention_must_be_one_cloudwatch_offers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[lambda\] log_retention_days = 31: must be a "
                                          "retention CloudWatch Logs offers"):
        load_config(_write(tmp_path, "[lambda]\nlog_retention_days = 31\n"))
    assert load_config(_write(tmp_path, "[lambda]\nlog_retention_days = 365\n"))
