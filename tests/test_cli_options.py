"""The command line's shape: one meaning (one help text) per flag name across every command, short files, and the
old flag names (before issue 27) still accepted."""

from collections import defaultdict
from pathlib import Path

import pytest
import typer

import vramfit.cli
from vramfit.cli import app, main
from vramfit.cli.app import OLD_FLAGS, new_flag_names

CLI = Path(vramfit.cli.__file__).parent


def _options() -> dict[str, dict[str, set[str]]]:
    """flag name -> {help text -> commands} over every command's options."""
    group = typer.main.get_command(app)
    seen: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for name, command in group.commands.items():
        for param in command.params:
            for flag in (*param.opts, *param.secondary_opts):
                if flag.startswith("--"):
                    seen[flag][getattr(param, "help", None) or ""].add(name)
    return seen


def test_each_flag_name_has_one_meaning_across_commands():
    seen = _options()
    shared = {flag: helps for flag, helps in seen.items() if len(set().union(*helps.values())) > 1}
    assert {"--db", "--device", "--target", "--data-dir", "--suggestions-file", "--vram", "--json"} <= set(shared)
    differ = {flag: dict(helps) for flag, helps in shared.items() if len(helps) > 1}
    assert not differ, f"flags with more than one help text: {differ}"


def test_one_flag_for_the_suggestions_file_and_none_named_like_the_index():
    seen = _options()
    assert set().union(*seen["--suggestions-file"].values()) == {"suggest", "train", "plot", "report"}
    assert "--save" not in seen and "--suggestions" not in seen and "--out" in seen  # report's page only
    assert set().union(*seen["--out"].values()) == {"report"}


def test_every_cli_file_is_short():
    sizes = {p.name: len(p.read_text().splitlines()) for p in CLI.glob("*.py")}
    assert len(sizes) >= 6 and all(n < 200 for n in sizes.values()), sizes


def test_old_flag_names_are_rewritten_for_their_command_only():
    assert new_flag_names(["fit", "--out", "m", "--target=rss", "--device", "cpu"]) == [
        "fit", "--models", "m", "--reading=rss", "--only-device", "cpu"]
    assert new_flag_names(["estimate", "--target", "cpu"]) == ["estimate", "--target", "cpu"]
    assert new_flag_names(["suggest", "--vram", "8G", "--device", "cpu", "--save", "s.json"]) == [
        "suggest", "--vram", "8G", "--target", "cpu", "--suggestions-file", "s.json"]
    seen = _options()
    for command, renames in OLD_FLAGS.items():
        for new in renames.values():
            assert command in set().union(*seen[new].values()), (command, new)


def test_old_name_still_works_end_to_end(tmp_path, capsys):
    """`suggest --save` (the old name of --suggestions-file) reaches the new option: a folder given is refused
    under the new name, before any planning."""
    rc = main(["suggest", "--vram", "8G", "--save", str(tmp_path), "--no-profile"])
    assert rc == 2 and f"--suggestions-file {tmp_path}" in capsys.readouterr().err


def _crash(*args, **kwargs):
    raise ZeroDivisionError("a bug")


def test_a_bug_is_one_line_that_says_where_and_the_traceback_on_request(monkeypatch, capsys):
    """A bug below the CLI (here: `info --vram` made to divide by zero) ends as one `error: internal error` line with
    its file and line and exit code 1, not a traceback; VRAMFIT_TRACEBACK=1 lets the exception through."""
    monkeypatch.setattr("vramfit.cards.card_lines", _crash)
    monkeypatch.delenv("VRAMFIT_TRACEBACK", raising=False)
    rc = main(["info", "--vram", "8G"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("error: internal error, please report it: ZeroDivisionError: a bug")
    assert "tests/test_cli_options.py" in err or "test_cli_options.py:" in err
    monkeypatch.setenv("VRAMFIT_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        main(["info", "--vram", "8G"])
