"""Every `pointcoc <command> --help` tells the truth: each default shown once and equal to the parser's, the
pixel command names its own recipe, the flags the issues asked for are there."""
import argparse
import re

import pytest

from pointcoc.commands import SUBCOMMANDS, main
from pointcoc.engine.config import AUTHORS_EPOCHS, DEFAULT_EPOCHS
from pointcoc.engine.pixel_task import PIXEL_DEFAULTS

_DEFAULT_WORD = re.compile(r"\bdefault\b", re.IGNORECASE)
# "(default: X" / "(default X" / "default: X" with X up to the next , ; ) or space
_DEFAULT_VALUE = re.compile(r"\bdefault:? ([^\s,;)]+)", re.IGNORECASE)


def _render(name, monkeypatch, capsys):
    """(the parser, its --help text) of subcommand ``name``, rendered 120 columns wide."""
    monkeypatch.setenv("COLUMNS", "120")
    seen = []
    real = argparse.ArgumentParser.print_help

    def record(self, file=None):
        seen.append(self)
        real(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert len(seen) == 1
    return seen[0], capsys.readouterr().out


def _option_blocks(text):
    """Option string (its longest '--' spelling) -> the help printed for it, wrapped lines joined."""
    blocks, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (-\S.*)$", line)
        if match:
            head = match.group(1)
            flags = re.findall(r"(?:^|, )(--?[\w-]+)", head.split("  ")[0])
            current = max(flags, key=len)
            blocks[current] = head[len(head.split("  ")[0]):].strip()
        elif current is not None and line.startswith("    ") and line.strip():
            blocks[current] = (blocks[current] + " " + line.strip()).strip()
        else:
            current = None
    # textwrap breaks "--redraw-masks" after a hyphen: join those again
    return {k: re.sub(r"(?<=\w)- (?=\w)", "-", v) for k, v in blocks.items()}


def _shown(default, action):
    """How --help should spell ``default``."""
    if default is True:  # a BooleanOptionalAction on by default: its positive flag
        return action.option_strings[0]
    return str(default)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_default_is_shown_once_and_is_the_parsers(name, monkeypatch, capsys):
    parser, text = _render(name, monkeypatch, capsys)
    blocks = _option_blocks(text)
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        flag = max(action.option_strings, key=len)
        assert flag in blocks, (name, flag, sorted(blocks))
        help_text = blocks[flag]
        assert len(_DEFAULT_WORD.findall(help_text)) <= 1, (name, flag, help_text)  # never twice
        default = action.default
        if default is None or default is False or default == "" or action.required:
            continue  # nothing to show, or the help describes what None resolves to
        values = _DEFAULT_VALUE.findall(help_text)
        assert values, f"{name} {flag}: default {default!r} is not shown: {help_text!r}"
        assert values[0] == _shown(default, action), (name, flag, values[0], default)


def test_train_pixels_names_its_own_recipe_not_the_authors(monkeypatch, capsys):
    parser, text = _render("train-pixels", monkeypatch, capsys)
    assert "ScanObjectNN" not in text and "authors' script" not in text
    d = PIXEL_DEFAULTS
    title = next(g.title for g in parser._action_groups if g.title.startswith("training"))
    assert f"lr {d.lr:g}, {d.epochs} epochs, label smoothing {d.label_smoothing:g}" in title
    assert "`pointcoc recipes` lists" in title
    blocks = _option_blocks(text)
    assert "pointmlp_coc_pixels_small for digits" in blocks["--model"]  # what --model auto means
    # the mask flags agree with each other and with the defaults
    assert parser.get_default("redraw_masks") is True
    assert "with --no-redraw-masks, the one fixed training mask" in blocks["--mask-seed"]
    assert "(default 0.5;" in blocks["--keep"] and parser.get_default("keep") is None


def test_train_names_the_authors_recipe_and_their_epochs(monkeypatch, capsys):
    parser, text = _render("train", monkeypatch, capsys)
    assert any("the authors' ScanObjectNN recipe" in (g.title or "") for g in parser._action_groups)
    epochs = _option_blocks(text)["--epochs"]
    for model, n in AUTHORS_EPOCHS.items():
        assert f"{model} {n}" in epochs
    assert f"others {DEFAULT_EPOCHS}" in epochs


@pytest.mark.parametrize("name", ["visualize-clusters", "train", "train-pixels", "evaluate", "export-weights"])
def test_commands_that_compute_take_threads(name, monkeypatch, capsys):
    parser, text = _render(name, monkeypatch, capsys)
    assert "--threads" in _option_blocks(text)
    assert parser.get_default("threads") >= 0


@pytest.mark.parametrize("name", ["evaluate", "export-weights"])
def test_evaluation_commands_do_not_promise_epoch_lines(name, monkeypatch, capsys):
    _, text = _render(name, monkeypatch, capsys)
    assert "epoch" not in _option_blocks(text)["--progress"]


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_descriptions_are_plain_text(name, monkeypatch, capsys):
    parser, _ = _render(name, monkeypatch, capsys)
    assert parser.description and "``" not in parser.description  # no reST from a module docstring
