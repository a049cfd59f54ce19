"""The ``pointcoc`` command: one subcommand per job, each with its own ``--help``.

    pointcoc train --config demo                         # PointMLP-elite on the shipped modelnet10
    pointcoc train --config scanobjectnn_pointmlp_coc    # PointMLP-CoC on ScanObjectNN, the published recipe
    pointcoc train-pixels --dataset mnist5k --format discrete --keep 0.5
    pointcoc evaluate runs/demo/last.pt
    pointcoc env                                         # versions and devices, for bug reports

``python -m pointcoc`` is the same program; the files in the repository's ``scripts/`` folder are thin
wrappers over these subcommands. Exit codes: 0 success, 2 a usage error (one ``error:`` line), 130 Ctrl-C, 143
SIGTERM during training, 1 any other error (one line; ``pointcoc --debug ...`` shows its traceback).
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["SUBCOMMANDS", "REQUIRED_ARGUMENTS", "main", "recipe_list_text"]


def _engine_task(module: str, build: str, run: str) -> Callable[[List[str], str], int]:
    """Runner of a command whose parser (``build()``) and job (``run(args)``) are in ``pointcoc.engine.<module>``,
    imported only when the command runs."""
    def runner(argv, prog):
        task = importlib.import_module(f"pointcoc.engine.{module}")
        parser = getattr(task, build)()
        parser.prog = prog
        return task.run_cli(getattr(task, run), parser, argv)
    return runner


def _command_module(name: str) -> Callable[[List[str], str], int]:
    """Runner of ``pointcoc.commands.<name>.main(argv, prog)``, imported only when the command runs."""
    return lambda argv, prog: importlib.import_module(f"pointcoc.commands.{name}").main(argv, prog)


def _env(argv, prog):
    import argparse

    from pointcoc.env import env_report
    argparse.ArgumentParser(prog=prog, description="Print pointcoc's environment report (versions of pointcoc, "
                                                   "torch and the optional backends, the devices torch sees) "
                                                   "to paste into bug reports.").parse_args(argv)
    print(env_report())
    return 0


def _recipes(argv, prog):
    import argparse
    argparse.ArgumentParser(prog=prog, description="List the recipe files shipped with pointcoc "
                                                   "(for --config NAME).").parse_args(argv)
    print(recipe_list_text())
    return 0


def _weights(argv, prog):
    import argparse

    from pointcoc.models.pretrained import cache_dir, list_pretrained, pretrained_card
    argparse.ArgumentParser(prog=prog, description="List the trained weights available to "
                                                   "create_model(name, pretrained=TAG), with their measured "
                                                   "accuracy.").parse_args(argv)
    broken = 0
    for tag in list_pretrained():
        try:
            card = pretrained_card(tag)
        except ValueError as err:  # one damaged card: the others are still listed
            print(f"{tag:40s} unusable: {err}", file=sys.stderr)
            broken += 1
            continue
        m, data = card["metrics"], card["data"]
        where = "cache" if str(card["card_path"]).startswith(str(cache_dir())) else "shipped"
        what = "points" if data.get("format", "points") == "points" else f"{data['format']} (keep {data.get('keep')})"
        print(f"{tag:40s} {data.get('dataset')}, {what}: test OA {m['oa']:.2f}%  mAcc {m['macc']:.2f}%  [{where}]")
    return 2 if broken else 0


# name -> (one-line description, runner(argv, prog) -> exit code)
SUBCOMMANDS: Dict[str, Tuple[str, Callable[[List[str], str], int]]] = {
    "train": ("train PointMLP / PointMLP-elite / PointMLP-CoC on point clouds (ScanObjectNN, ModelNet40, "
              "modelnet10)", _engine_task("pointcloud_task", "build_train_parser", "train_main")),
    "train-pixels": ("train pixel-set models on images as sets of pixels (digits, mnist5k, lfw_faces, "
                     "modelnet_depth)", _engine_task("pixel_task", "build_train_parser", "train_main")),
    "evaluate": ("evaluate a checkpoint (either kind) or the authors' weights on its test set",
                 _engine_task("pointcloud_task", "build_eval_parser", "evaluate_main")),
    "visualize-clusters": ("draw the context clusters of a trained pixel-set CoC model (PNG)",
                           _command_module("visualize_clusters")),
    "plot-runs": ("overlay the training curves of several runs (PNG)", _command_module("plot_runs")),
    "benchmark": ("speed and memory against reference implementations, as ratios", _command_module("benchmark")),
    "gpu-check": ("everything that needs a GPU, in one budgeted run", _command_module("gpu_check")),
    "env": ("print the environment report for bug reports", _env),
    "recipes": ("list the shipped recipe files (--config NAME)", _recipes),
    "weights": ("list the trained weights, shipped and cached (create_model(name, pretrained=TAG))", _weights),
    "export-weights": ("turn a run's checkpoint into trained weights with a model card (measured on its test "
                       "split)", _engine_task("weights_task", "build_export_parser", "export_main")),
}


# What the commands that cannot run without arguments need: called bare they say so at once, not after the seconds
# torch takes to import (their parsers refuse the same later; tests/test_small_ones.py keeps the two in step).
REQUIRED_ARGUMENTS = {
    "evaluate": "a run's CHECKPOINT, --pretrained MODEL.TAG or --authors-checkpoint PATH",
    "visualize-clusters": "CHECKPOINT IMAGE [IMAGE ...]",
    "plot-runs": "RUN [RUN ...]",
    "export-weights": "CHECKPOINT --tag TAG",
}


def recipe_list_text() -> str:
    """One line per shipped recipe: its name, then ``[command] description`` in one column."""
    from pointcoc.engine.recipes import list_recipes, recipe_summary
    names = list_recipes()
    width = max(map(len, names), default=0)
    return "\n".join(f"{name:{width}s}  {recipe_summary(name)}" for name in names)


def _usage() -> str:
    from pointcoc import __version__
    width = max(map(len, SUBCOMMANDS))
    lines = [f"usage: pointcoc <command> [options]   (pointcoc {__version__})", "",
             "Deep learning on point sets: PointMLP, PointMLP-elite, PointMLP-CoC; images as sets of pixels.", "",
             "commands:"]
    lines += [f"  {name:{width}s}  {text}" for name, (text, _) in SUBCOMMANDS.items()]
    lines += ["", "`pointcoc <command> --help` lists a command's options; `pointcoc --debug <command> ...` (or "
              "POINTCOC_DEBUG=1) shows the traceback of an error instead of its one line."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``pointcoc <command> [options]``; returns the exit code.

    Called without ``argv`` (the installed command, ``python -m pointcoc``) it is the program: once the command
    has done its work a Ctrl-C is ignored (the exit code stays the command's), instead of killing the
    interpreter while it shuts down (exit -2, silently). Called with ``argv`` it leaves signals alone.
    """
    try:
        code = _dispatch(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C while a subcommand imports its modules: one line, as run_cli does later
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a pipe that closed early (`pointcoc recipes | head -1`)
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if argv is None:
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored handlers survive the interpreter's shutdown
    return code


def _dispatch(argv: List[str]) -> int:
    if argv and argv[0] == "--debug":  # tracebacks instead of one-line errors (pointcoc.engine.cli)
        import os
        os.environ["POINTCOC_DEBUG"] = "1"
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from pointcoc import __version__
        print(f"pointcoc {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        import difflib
        close = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"error: unknown command {name!r}.{hint} Commands: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    if not rest and name in REQUIRED_ARGUMENTS:
        print(f"error: pointcoc {name} needs {REQUIRED_ARGUMENTS[name]}; `pointcoc {name} --help` lists its "
              "options", file=sys.stderr)
        return 2
    from pointcoc.allocator import keep_freed_memory
    keep_freed_memory()  # large tensors reuse freed memory instead of fresh zero-filled pages: faster steps
    return SUBCOMMANDS[name][1](rest, f"pointcoc {name}")
