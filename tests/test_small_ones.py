"""Small things (issue 27 item 9): the recipe list's column, dist/ ignored, a bare command's usage error before torch
imports, warnings that name the caller's line, benchmark ratios from several timed pairs with a noise note."""
import re
import subprocess
import warnings

import pytest
import torch

from pointcoc import bench as benchmark
from pointcoc._links import REPOSITORY
from pointcoc.bench.measure import MIN_PAIRS
from pointcoc.commands import REQUIRED_ARGUMENTS, SUBCOMMANDS, main, recipe_list_text
from pointcoc.engine import fit
from pointcoc.engine.recipes import list_recipes

from script_checks import ROOT, run_python
from test_engine import NAMES, TinyPointNet, config, datasets


def test_the_recipe_list_starts_every_summary_in_one_column():
    lines = recipe_list_text().splitlines()
    assert len(lines) == len(list_recipes()) and max(map(len, list_recipes())) > 28  # the longest name overflowed 28
    assert len({line.index("[") for line in lines}) == 1, lines
    assert not re.search(r"(?<![\w/])docs/", recipe_list_text().replace(f"{REPOSITORY}/blob/main/docs/", ""))


def test_built_wheels_are_ignored_by_git(tmp_path):
    done = subprocess.run(["git", "check-ignore", "-q", "dist/pointcoc-0-py3-none-any.whl"], cwd=ROOT)
    assert done.returncode == 0


@pytest.mark.parametrize("name", sorted(REQUIRED_ARGUMENTS))
def test_a_bare_command_that_needs_arguments_says_so_before_torch_imports(name):
    code = (f"import sys\nfrom pointcoc.commands import main\ncode = main([{name!r}])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)")
    done = run_python(["-c", code], timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: pointcoc {name} needs {REQUIRED_ARGUMENTS[name]}; `pointcoc {name} --help` lists " \
                          "its options\n"


@pytest.mark.parametrize("name", sorted(REQUIRED_ARGUMENTS))
def test_the_commands_said_to_need_arguments_do_need_them(name, capsys):
    """The table agrees with the parsers: without arguments each command's own runner refuses with exit 2."""
    try:
        code = SUBCOMMANDS[name][1]([], f"pointcoc {name}")
    except SystemExit as exited:
        code = exited.code
    assert code == 2
    assert "error:" in capsys.readouterr().err


def test_a_command_without_required_arguments_still_runs_bare(capsys):
    assert "recipes" not in REQUIRED_ARGUMENTS and main(["recipes"]) == 0
    assert capsys.readouterr().out.startswith("demo ")


def test_fit_warnings_name_the_line_that_called_fit(tmp_path):
    train, test = datasets()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit(TinyPointNet(), train, test, config(epochs=1, sync_bn=True), tmp_path / "a", NAMES, progress="none")
    (warning,) = [w for w in seen if "--sync-bn has no effect" in str(w.message)]
    assert warning.filename == __file__


def test_resume_warnings_name_the_line_that_called_fit(tmp_path):
    train, test = datasets()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fit(TinyPointNet(), train, test, config(epochs=2), tmp_path, NAMES, stop_after_epoch=1, progress="none")
        torch.set_num_threads(2)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fit(TinyPointNet(), train, test, config(epochs=2), tmp_path, NAMES, resume=tmp_path / "last.pt",
                progress="none")
    finally:
        torch.set_num_threads(threads)
    (warning,) = [w for w in seen if "trained with 1 torch threads" in str(w.message)]
    assert warning.filename == __file__


def test_a_ratio_rests_on_several_timed_pairs():
    assert MIN_PAIRS >= 3
    with pytest.raises(ValueError, match=f"repeat must be >= {MIN_PAIRS} \\(the median of fewer timed pairs is noise"):
        benchmark.timed_pairs(lambda: None, lambda: None, repeat=MIN_PAIRS - 1)
    rows = benchmark.bench_model_vs_reference(quick=True, batches=(2,), n_points=128, models=("pointmlp_elite",),
                                              model_kwargs=dict(k_neighbors=8, embed_dim=16))
    assert f"(median of {MIN_PAIRS} pairs)" in rows[0].note


def test_a_quick_table_says_what_its_ratios_are_worth(monkeypatch, capsys):
    from pointcoc.commands.benchmark import main as benchmark_main

    monkeypatch.setattr(benchmark, "SECTIONS", {"fps": lambda device, quick, **cases: [
        benchmark.Row("FPS", "tiny", "a", "b", 1.0, 2.0)]})
    assert benchmark_main(["--quick", "--only", "fps"]) == 0
    out = capsys.readouterr().out
    assert benchmark.QUICK_NOTE in out and out.index(benchmark.QUICK_NOTE) < out.index("| what |")
    assert benchmark.QUICK_NOTE not in benchmark.to_markdown([benchmark.Row("FPS", "tiny", "a", "b", 1.0, 2.0)])
