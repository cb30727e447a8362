"""The parser-free look at `[logship] state_dir`: the plainest spelling is found and
resolved as the full parser resolves it; any other spelling gives up (None)."""

from __future__ import annotations

from pathlib import Path

import pytest

from logship.config.files import read_for_hot_path
from logship.config.state_dir_scan import config_file, state_dir


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "logship.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    (path.parent / "connectors").mkdir(exist_ok=True)
    (path.parent / "connectors" / "main.toml").write_text('kind = "postgresql"\nsite = "dr"\n')
    return path


def _parsed(path: Path) -> str:
    return str(read_for_hot_path(path, "main", None).state_dir)


@pytest.mark.parametrize(
    "text",
    [
        '[logship]\nstate_dir = "state"\n',
        '# a comment\n[logship]  # the main table\nstate_dir = "state"  # relative\n',
        '[logship]\ncatalog_url = "x"\n\n   state_dir   =   "./state"\n',
        '[logship]\nstate_dir = "/var/lib/logship"\n',
        '[logship]\nstate_dir = "~/logship-state"\n',
        '[sites.dr]\nhost = "h"\n[logship]\nstate_dir = "../state"\n',
    ],
)
def test_the_plain_form_is_found_as_the_parser_finds_it(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    found = state_dir(str(path))
    assert found is not None
    assert Path(found) == Path(_parsed(path))  # the same folder (`./` aside)


def test_a_relative_state_dir_is_relative_to_the_configs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, '[logship]\nstate_dir = "state"\n')
    monkeypatch.chdir(tmp_path)  # not where the config is
    assert state_dir(str(path)) == str(tmp_path / "conf" / "state")


@pytest.mark.parametrize(
    "text",
    [
        # dotted and quoted keys
        'logship.state_dir = "/a"\n',
        '[logship]\n"state_dir" = "/a"\n',
        "[logship]\n'state_dir' = \"/a\"\n",
        '[logship]\nstate_dir.x = "/a"\n',
        '"logship".state_dir = "/a"\n',
        # an inline table
        'logship = { state_dir = "/a" }\n',
        # multi-line strings: what looks like a key inside may not be one
        '[logship]\nnote = """\n[logship]\nstate_dir = "/b"\n"""\nstate_dir = "/a"\n',
        "[logship]\nnote = '''\n'''\nstate_dir = \"/a\"\n",
        # escapes and other string forms
        '[logship]\nstate_dir = "/a\\u0062"\n',
        '[logship]\nstate_dir = "C:\\\\state"\n',
        "[logship]\nstate_dir = '/a'\n",
        '[logship]\nstate_dir = "/a" junk\n',
        '[logship]\nstate_dir = "/a\n',
        '[logship]\nstate_dir = ""\n',
        # twice (the parser refuses it), or not at all
        '[logship]\nstate_dir = "/a"\nstate_dir = "/b"\n',
        '[logship]\nstate_dir = "/a"\n[logship]\nstate_dir = "/b"\n',
        '[sites.dr]\nstate_dir = "/a"\n',
        # a site's own state_dir: which applies depends on the site this runs at
        '[logship]\nstate_dir="state"\n[sites.dr]\nstate_dir = "elsewhere"\n',
        "",
        # a sub-table of logship spelling it otherwise
        '[logship.more]\n"state_dir" = "/a"\n',
    ],
)
def test_any_other_spelling_gives_up(tmp_path: Path, text: str) -> None:
    assert state_dir(str(_write(tmp_path, text))) is None


def test_an_unreadable_config_gives_up(tmp_path: Path) -> None:
    assert state_dir(str(tmp_path / "missing.toml")) is None
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'[logship]\nstate_dir = "\xff"\n')
    assert state_dir(str(binary)) is None


def test_config_file_is_chosen_as_the_cli_chooses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOGSHIP_CONFIG", raising=False)
    assert config_file(None) == str(tmp_path / "logship.toml")
    monkeypatch.setenv("LOGSHIP_CONFIG", "conf/x.toml")
    assert config_file(None) == str(tmp_path / "conf" / "x.toml")
    assert config_file("/etc/logship.toml") == "/etc/logship.toml"
