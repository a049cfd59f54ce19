"""Recipes as files: ``--config NAME|PATH`` for the training commands.

A recipe is a TOML file (``pointcoc/recipes/*.toml`` ships the published ones; ``pointcoc recipes`` lists them)::

    command = "train"                        # the subcommand it is for: "train" or "train-pixels"
    description = "PointMLP-CoC on ScanObjectNN PB_T50_RS, the authors' recipe"

    [args]                                   # long option names as on the command line, '-' or '_'
    model = "pointmlp_coc"
    epochs = 250
    lr = 0.01
    amp = false                              # a switch: true passes --amp, false leaves it off
    [args.model_kwargs]                      # a table for a JSON option
    embed_dim = 64

The file's options are turned into command-line arguments placed *before* the ones typed, so every value
is checked by the command's own parser, and a flag typed on the command line overrides the file. The
resolved values are what the run records (``config.json``, the checkpoint) and what ``--resume`` checks;
``TrainConfig.recipe`` keeps the name or path the run was started with.

TOML because its parser is in the standard library (``tomllib``, Python 3.11+; the ``tomli`` backport on
3.10), it is typed (``no`` is a string, not False; integers stay integers), and it cannot execute code.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .resume_args import apply_checkpoint_defaults, resume_path_in

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["RECIPE_SUFFIX", "list_recipes", "recipe_path", "load_recipe", "recipe_summary", "recipe_argv",
           "parse_with_recipe"]

RECIPE_SUFFIX = ".toml"


def _recipe_dir() -> Path:
    return Path(str(resources.files("pointcoc"))) / "recipes"


def list_recipes() -> List[str]:
    """Names of the shipped recipes (``--config NAME``), sorted."""
    return sorted(p.stem for p in _recipe_dir().glob(f"*{RECIPE_SUFFIX}"))


def recipe_path(name_or_path: str) -> Path:
    """The file of a shipped recipe name, or ``name_or_path`` itself when it is a file.

    Raises FileNotFoundError naming the shipped recipes when it is neither.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = _recipe_dir() / f"{name_or_path}{RECIPE_SUFFIX}"
    if shipped.is_file():  # a shipped name wins over a folder of that name in the working folder (runs/demo ...)
        return shipped
    if path.is_dir():
        raise ValueError(f"--config {name_or_path}: is a folder; give a recipe name or a .toml file")
    raise FileNotFoundError(f"--config {name_or_path}: no such file and no shipped recipe of that name; shipped "
                            f"recipes: {', '.join(list_recipes())} (`pointcoc recipes` describes them)")


def load_recipe(name_or_path: str) -> Tuple[Path, Dict]:
    """(path, parsed TOML) of a recipe; ValueError for a file that is not a valid recipe, naming the file."""
    path = recipe_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark some editors write
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: not a valid TOML file ({err})") from None
    unknown = sorted(set(data) - {"command", "description", "args"})
    if unknown:
        raise ValueError(f"--config {path}: unknown top-level keys {unknown}; a recipe holds command, description "
                         "and an [args] table")
    if not isinstance(data.get("command"), str) or not isinstance(data.get("args", {}), dict):
        raise ValueError(f"--config {path}: needs command = \"train\" or \"train-pixels\" and an [args] table")
    return path, data


def recipe_summary(name: str) -> str:
    """``command: description`` of a shipped recipe, for listings."""
    _, data = load_recipe(name)
    return f"[{data['command']}] {data.get('description', '')}"


def _options(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Option name (its long flag without ``--``, ``-`` as ``_``) -> action, for the options a recipe may set."""
    out = {}
    for action in parser._actions:
        if action.dest in ("help", "recipe"):
            continue
        for flag in action.option_strings:
            if flag.startswith("--") and not flag.startswith("--no-"):
                out[flag[2:].replace("-", "_")] = action
    return out


def _holds_datetime(value) -> bool:
    """Whether a TOML value is, or (in a table or array) holds, a date, time or date-time."""
    if isinstance(value, dict):
        return any(map(_holds_datetime, value.values()))
    if isinstance(value, list):
        return any(map(_holds_datetime, value))
    return isinstance(value, (datetime.date, datetime.time))  # datetime.datetime is a date


def recipe_argv(parser: argparse.ArgumentParser, path: Path, args: Dict) -> List[str]:
    """The recipe's ``[args]`` as command-line tokens of ``parser``; ValueError naming the file for an option the
    command does not have or a value of the wrong kind."""
    options = _options(parser)
    tokens: List[str] = []
    for key, value in args.items():
        if _holds_datetime(value):
            raise ValueError(f"--config {path}: {key} holds a TOML date or time ({value!r}); no option takes one")
        name = key.replace("-", "_")
        if name not in options:
            raise ValueError(f"--config {path}: {parser.prog} has no option {key!r}; its options: "
                             f"{', '.join(sorted(options))}")
        action = options[name]
        flag = "--" + name.replace("_", "-")
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise ValueError(f"--config {path}: {key} is a switch; give true or false, not {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):
                tokens.append(flag if value else "--no-" + flag[2:])
            elif value == isinstance(action, argparse._StoreTrueAction):
                tokens.append(flag)
            continue
        if isinstance(value, dict):
            tokens += [flag, json.dumps(value)]
        elif isinstance(value, list):
            if action.nargs not in ("+", "*"):
                raise ValueError(f"--config {path}: {key} takes one value, not a list ({value!r})")
            tokens += [flag, *map(str, value)]
        elif isinstance(value, bool):
            raise ValueError(f"--config {path}: {key} takes a value, not {value!r}")
        else:
            tokens += [flag, str(value)]
    return tokens


def parse_with_recipe(parser: argparse.ArgumentParser, argv: Optional[List[str]], command: str) -> argparse.Namespace:
    """Parse ``argv`` with ``parser``, reading ``--config NAME|PATH`` first: the recipe's options go before the
    typed ones, so typed flags override the file. A recipe for another command, or a bad file, is a usage error
    (``parser.error``: exit 2 with one message).

    With ``--resume PATH`` the checkpoint's recorded settings are the defaults below both
    (:func:`pointcoc.engine.resume_args.apply_checkpoint_defaults`; its errors propagate as usage errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = resume_path_in(argv)
    if resume is not None:  # the checkpoint's settings as defaults: `--resume PATH` alone continues the run
        apply_checkpoint_defaults(parser, resume, command)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", dest="recipe", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.recipe is None:
        return parser.parse_args(argv)
    try:
        path, data = load_recipe(known.recipe)
        if data["command"] != command:
            raise ValueError(f"--config {path} is a recipe for `pointcoc {data['command']}`, not "
                             f"`pointcoc {command}`")
        tokens = recipe_argv(parser, path, data.get("args", {}))
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    # The file's values alone first, so a bad value in the file is reported as the file's.
    error = parser.error
    parser.error = lambda message: error(f"in --config {path}: {message}")
    try:
        parser.parse_known_args(tokens)
    finally:
        parser.error = error
    return parser.parse_args(tokens + argv)
