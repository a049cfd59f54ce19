"""Every command line in README.md and docs/*.md is one a reader can type.

Commands are taken from each page's code blocks (fenced or indented) and inline code spans: ``pointcoc <command>
...``, ``torchrun ... -m pointcoc ...``, ``python scripts/X.py ...``, ``python benchmarks/X.py ...`` and ``make
<target>``. Every one is first parsed by its command's own parser (with its ``--config`` recipe), so a renamed
flag, a removed choice, a recipe that is not shipped or a benchmark section that does not exist fails here.

The code blocks of a page then run in order, in one scratch folder per page (the ``runs/...`` paths of a page
refer to each other, as for a reader following it), in this process:

* training on a data set the package ships, the listings (``recipes``, ``weights``, ``env``) and the commands
  that read a run folder an earlier command wrote (evaluate, visualize-clusters, plot-runs, export-weights) must
  exit 0. Training gets ``--epochs 1 --limit-train-batches 1 --limit-val-batches 1`` appended (the last value of
  a flag wins), evaluate ``--limit-val-batches 1``: the page's flags are checked, not its accuracy;
* training on a data set users download (ScanObjectNN, ModelNet40; ``POINTCOC_DATA`` points at an empty folder
  and the checkout's ``data/`` is hidden, as in an installed wheel, which lacks ``modelnet40_1024``) and the
  commands that read its run folder must exit 2 with the message saying what is missing;
* the benchmarks, the GPU check, the experiment plans and commands reading their outputs take minutes to hours
  and are parsed only (``make bench`` / ``make gpu-check`` and the slow tests run them).
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

from pointcoc.commands import SUBCOMMANDS
from pointcoc.commands import main as pointcoc_main
from script_checks import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOWNLOADED_DATA = {"scanobjectnn", "modelnet40"}
TRAIN_FAST = ["--epochs", "1", "--limit-train-batches", "1", "--limit-val-batches", "1", "--progress", "none"]
PLACEHOLDERS = {"MODEL": "pointmlp_coc", "NAME": "pointmlp_coc", "S": "0", "DIR": "gpu_check_out", "PATH": "x.pth"}
COMMAND_START = re.compile(r"^(?:[A-Z_]+=\S*\s+)*(pointcoc\s|torchrun\s|python3?\s+(?:scripts|benchmarks)/|make\s)")


@dataclass
class DocCommand:
    page: str
    line: int
    text: str
    in_block: bool  # a code block (runs) rather than an inline span (parsed only)

    def __str__(self):
        return f"{self.page}:{self.line}: {self.text}"


def _code_block_lines(text: str):
    """(line number, stripped line) of the fenced and indented code blocks, continuation lines joined."""
    fenced, previous_blank, indented = False, True, False
    out: List[list] = []
    continued = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, continued = not fenced, False
            continue
        code = fenced or (line.startswith("    ") and line.strip() and (previous_blank or indented))
        indented = bool(code) and not fenced
        previous_blank = not line.strip()
        if not code:
            continued = False
            continue
        stripped = line.strip()
        if continued:
            out[-1][1] = out[-1][1][:-1].rstrip() + " " + stripped
        else:
            out.append([number, stripped])
        continued = stripped.endswith("\\")
    return [tuple(item) for item in out]


def doc_commands(page: Path) -> List[DocCommand]:
    text = page.read_text(encoding="utf-8")
    commands = [DocCommand(page.name, n, line, True) for n, line in _code_block_lines(text)
                if COMMAND_START.match(line)]
    in_code = {n for n, _ in _code_block_lines(text)}
    for number, line in enumerate(text.splitlines(), 1):
        if number in in_code:
            continue
        for span in re.findall(r"`([^`]+)`", line):
            words = span.split()
            if words[0] == "pointcoc" and (len(words) < 3 or words[1] not in SUBCOMMANDS):
                continue  # the name of a command in a sentence (`pointcoc evaluate`), not a command line
            if COMMAND_START.match(span):
                commands.append(DocCommand(page.name, number, span, False))
    return commands


def _tokens(command: DocCommand) -> Optional[List[str]]:
    """The command's words, placeholders filled in; None for a usage synopsis (``[--flag X]``, ``a|b``, ``...``)."""
    words = shlex.split(command.text, comments=True)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words.pop(0)  # OMP_NUM_THREADS=1 / PYTHONPATH=.
    if any(w.startswith("[") or w == "..." or ("|" in w and not w.startswith("-")) for w in words):
        return None
    return [PLACEHOLDERS.get(w, w) for w in words]


def _program(words: List[str]):
    """('pointcoc', [subcommand, *args]) | ('script', [path, *args]) | ('make', [target])."""
    if words[0] == "make":
        return "make", words[1:]
    if words[0] == "torchrun":
        m = words.index("-m")
        assert words[m + 1] == "pointcoc", words
        return "pointcoc", words[m + 2:]
    if words[0] == "pointcoc":
        return "pointcoc", words[1:]
    path = ROOT / words[1]
    wrapped = re.search(r'main\(\["([a-z-]+)", \*sys\.argv\[1:\]\]\)', path.read_text()) if path.exists() else None
    if wrapped:  # scripts/train_scanobjectnn.py & co: thin wrappers over a subcommand
        return "pointcoc", [wrapped.group(1), *words[2:]]
    return "script", words[1:]


class _Parsed(BaseException):  # not Exception: run_cli turns those into one error line
    def __init__(self, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.namespace = namespace


def _parse_only(call) -> argparse.Namespace:
    """Run ``call()`` up to the end of its command's final ``parse_args`` and return the namespace."""
    from pointcoc.engine import recipes

    original, read_checkpoint = argparse.ArgumentParser.parse_args, recipes.apply_checkpoint_defaults

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_and_stop
    recipes.apply_checkpoint_defaults = lambda parser, path, command: None  # documented runs/... do not exist here
    try:
        call()
    except _Parsed as parsed:
        return parsed.namespace
    finally:
        argparse.ArgumentParser.parse_args = original
        recipes.apply_checkpoint_defaults = read_checkpoint
    raise AssertionError("the command returned without parsing its arguments")


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"doc_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(command: DocCommand, capsys) -> tuple:
    """(program, argv, namespace) of a documented command; fails with the parser's message."""
    words = _tokens(command)
    program, argv = _program(words)
    if program == "make":
        targets = re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M)
        assert argv[0] in targets, f"{command}: no Makefile target {argv[0]!r}"
        return program, argv, None
    try:
        if program == "pointcoc":
            assert argv and argv[0] in SUBCOMMANDS, f"{command}: no subcommand {argv[:1]}"
            namespace = _parse_only(lambda: pointcoc_main(list(argv)))
        else:
            module = _load_script(ROOT / argv[0])
            takes_argv = bool(inspect.signature(module.main).parameters)
            saved = sys.argv
            sys.argv = list(argv)
            try:
                namespace = _parse_only(lambda: module.main(argv[1:]) if takes_argv else module.main())
            finally:
                sys.argv = saved
    except SystemExit as exit_:
        pytest.fail(f"{command}\nis refused by its parser (exit {exit_.code}): {capsys.readouterr().err.strip()}")
    _check_names(command, program, argv, namespace)
    return program, argv, namespace


def _check_names(command, program, argv, namespace):
    """Names the parser takes as free text but the command checks later: benchmark / gpu-check sections."""
    if program != "pointcoc" or argv[0] not in ("benchmark", "gpu-check"):
        return
    if argv[0] == "benchmark":
        from pointcoc import bench
        sections, models = set(bench.SECTIONS), set(bench.MODEL_LABELS)
        for name in namespace.models.split(",") if namespace.models else []:
            assert name in models, f"{command}: no model {name!r} in the benchmarks ({sorted(models)})"
        if namespace.profile:
            from pointcoc.models import list_models
            assert namespace.profile in list_models(), f"{command}: --profile {namespace.profile} is no model"
    else:
        from pointcoc.bench import gpu_check
        sections = set(gpu_check.SECTIONS)
    for name in namespace.only.split(",") if namespace.only else []:
        assert name in sections, f"{command}: no section {name!r} ({sorted(sections)})"


ALL_COMMANDS = [c for page in PAGES for c in doc_commands(page)]


def test_the_pages_document_commands_of_every_kind():
    """The extraction finds what the pages hold (a broken extractor would make the tests below vacuous)."""
    texts = [c.text for c in ALL_COMMANDS]
    for start in ("pointcoc train ", "pointcoc train-pixels ", "pointcoc evaluate ", "torchrun ", "make demo",
                  "python scripts/benchmark.py ", "python scripts/pixel_experiments.py "):
        assert any(t.startswith(start) for t in texts), start
    assert sum(c.in_block for c in ALL_COMMANDS) >= 40


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_every_documented_command_is_accepted_by_its_parser(command, capsys):
    if _tokens(command) is None:
        pytest.skip("a usage synopsis")
    parse(command, capsys)


def _outputs(subcommand: str, namespace) -> List[Path]:
    if subcommand in ("train", "train-pixels"):
        seeds = getattr(namespace, "seeds", None)
        out = Path(namespace.output)
        return [out, *(out / f"seed{s}" for s in seeds)] if seeds else [out]
    return []


def _inputs(subcommand: str, namespace) -> List[Path]:
    if subcommand in ("evaluate", "visualize-clusters", "export-weights"):
        return [Path(namespace.checkpoint)] if getattr(namespace, "checkpoint", None) else []
    if subcommand in ("train", "train-pixels"):
        return [Path(namespace.resume)] if getattr(namespace, "resume", None) else []
    if subcommand == "plot-runs":
        return [Path(r) for r in namespace.runs]
    return []


def _under(path: Path, folders) -> bool:
    return any(path == f or f in path.parents for f in folders)


RUN_EXTRA = {"evaluate": ["--limit-val-batches", "1", "--progress", "none"], "export-weights": ["--progress", "none"]}


@pytest.mark.parametrize("page", [p for p in PAGES if any(c.in_block for c in doc_commands(p))],
                         ids=lambda p: p.name)
def test_the_code_blocks_of_a_page_run_in_order(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POINTCOC_DATA", str(tmp_path / "no_downloaded_data"))
    from pointcoc.data import locations
    monkeypatch.setattr(locations, "checkout_data_dir", lambda: None)  # as installed: no data/modelnet40_1024
    monkeypatch.setenv("POINTCOC_WEIGHTS", str(tmp_path / "weights_cache"))
    written, missing, parsed_only = [], [], []
    for command in (c for c in doc_commands(page) if c.in_block):
        if _tokens(command) is None:
            continue
        program, argv, namespace = parse(command, capsys)
        sub = argv[0] if program == "pointcoc" else None
        if sub in ("train", "train-pixels"):
            expect = 2 if namespace.dataset in DOWNLOADED_DATA else 0
            (missing if expect else written).extend(_outputs(sub, namespace))
            argv = argv + TRAIN_FAST
        elif sub in ("recipes", "weights", "env"):
            expect = 0
        elif sub == "export-weights" and Path(namespace.out or "-") == Path("pointcoc/weights"):
            parsed_only.append(command)  # re-exports the shipped weights into a checkout's package folder
            continue
        elif sub in RUN_EXTRA or sub in ("visualize-clusters", "plot-runs"):
            inputs = _inputs(sub, namespace)
            if inputs and all(_under(p, written) for p in inputs):
                expect = 0
            elif any(_under(p, missing) for p in inputs):
                expect = 2
            elif not inputs:  # evaluate --pretrained TAG
                expect = 0
            else:
                parsed_only.append(command)
                continue
            argv = argv + RUN_EXTRA.get(sub, [])
        else:
            parsed_only.append(command)
            continue
        capsys.readouterr()
        code = pointcoc_main(list(argv))
        out, err = capsys.readouterr()
        assert code == expect, f"{command}\nexited {code}, expected {expect}:\n{err[-3000:]}"
        if expect == 0:
            assert out.strip(), f"{command}: printed nothing"
            if sub in ("plot-runs", "visualize-clusters"):
                assert Path(namespace.output).with_suffix(".png").is_file(), f"{command}: no PNG"
        else:
            assert err.startswith("error:") or "error:" in err, err
            named = [str(p) for p in _inputs(sub, namespace)] + ["POINTCOC_DATA"]
            assert any(n in err for n in named), f"{command}: the message names none of {named}:\n{err}"
    # what was only parsed is what reads the output of a benchmark or an experiment plan
    for command in parsed_only:
        _, argv, _ = parse(command, capsys)
        assert argv[0] not in ("train", "train-pixels", "recipes", "weights", "env"), command
