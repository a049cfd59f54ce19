"""pointcoc as an installed package: the command and its subcommands, recipes as files, data locations, trained
weights with model cards, package metadata. (.ci/wheel_check runs the same things from an installed wheel.)"""
import argparse
import hashlib
import json
import re
import shutil
import signal
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch

import pointcoc
from pointcoc.commands import SUBCOMMANDS, main
from pointcoc.data import locations
from pointcoc.data.h5sets import DatasetNotFoundError, build_point_datasets
from pointcoc.engine import build_model_from_checkpoint, load_checkpoint
from pointcoc.engine import pixel_task, pointcloud_task
from pointcoc.engine.recipes import list_recipes, load_recipe
from pointcoc.models import pretrained as pretrained_mod

from script_checks import ROOT, run_python, start_python

TINY_PIXELS = ["--epochs", "1", "--batch-size", "16", "--limit-train-batches", "2", "--limit-val-batches", "2",
               "--device", "cpu", "--workers", "0", "--progress", "none"]


# ---------------------------------------------------------------- the command


def test_every_subcommand_is_listed_and_an_unknown_one_is_refused(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert re.search(rf"^  {re.escape(name)}\s", out, re.M), name
    assert main([]) == 2
    assert main(["trian"]) == 2
    assert "Did you mean 'train'" in capsys.readouterr().err


# what pip's generated `pointcoc` script runs (.venv/bin/pointcoc)
CONSOLE_SCRIPT = "import sys; from pointcoc.commands import main; sys.exit(main())"


def test_the_command_starts_without_torch_and_the_public_names_import_on_first_use():
    probe = ("import sys; from pointcoc.commands import main; print('torch' in sys.modules); "
             "import pointcoc; print('create_model' in dir(pointcoc), sorted(set(pointcoc.__all__) - set(dir(pointcoc))));"
             "from pointcoc import PointMLPCoC, ops; import torch; print(pointcoc.create_model.__module__, "
             "hasattr(torch.ops.pointcoc, 'knn'))")
    done = run_python(["-c", probe])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == ["False", "True []", "pointcoc.models.registry True"]
    with pytest.raises(AttributeError, match="module 'pointcoc' has no attribute 'nope'"):
        pointcoc.nope


def test_ctrl_c_at_any_moment_of_the_commands_start_up_is_one_line_and_exit_130():
    # The interrupt lands while python imports torch, the subcommand's modules or parses the flags. Only a
    # signal inside the interpreter's own start-up (the first few hundredths of a second, before any of
    # pointcoc runs) is python's: killed by SIGINT, silently (a shell shows 130 too).
    for delay in (0.15, 0.4, 0.8, 1.5, 3.0):
        proc = start_python(["-c", CONSOLE_SCRIPT, "env"])
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, (delay, err[-2000:])
        if proc.returncode == 0 and "pointcoc" in out:  # it finished first
            continue
        assert (proc.returncode, err.strip()) in ((130, "interrupted"), (-signal.SIGINT, "")), (delay, err[-2000:])


def test_ctrl_c_after_the_command_did_its_work_keeps_its_exit_code():
    # SIGINT right after main() returned, while the interpreter shuts down (torch imported): ignored
    late = CONSOLE_SCRIPT.replace("sys.exit(main())", "code = main(); import os, signal; "
                                                      "os.kill(os.getpid(), signal.SIGINT); sys.exit(code)")
    done = run_python(["-c", late, "env"])
    assert (done.returncode, done.stderr) == (0, ""), done.stderr[-2000:]
    assert "torch" in done.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help_names_the_subcommand(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: pointcoc {name}")


def _option_helps(parser):
    """flag -> the help text --help prints for it (defaults expanded)."""
    formatter = parser._get_formatter()
    out = {}
    for action in parser._actions:
        if action.option_strings and action.help:
            out[action.option_strings[-1]] = formatter._expand_help(action)
    return out


@pytest.mark.parametrize("build", [pixel_task.build_train_parser, pointcloud_task.build_train_parser,
                                   pointcloud_task.build_eval_parser])
def test_help_shows_each_default_once_and_never_none(build):
    for flag, text in _option_helps(build()).items():
        assert text.count("(default") <= 1, (flag, text)
        assert "(default: None)" not in text and "(default: False)" not in text, (flag, text)


def test_pixel_help_names_its_own_recipe_and_the_mask_flags_agree():
    parser = pixel_task.build_train_parser()
    titles = [g.title for g in parser._action_groups]
    assert not any("authors' ScanObjectNN recipe" in t for t in titles)
    assert any("lr 0.05, 30 epochs" in t for t in titles)
    helps = _option_helps(parser)
    assert "default 0.5" in helps["--keep"]
    assert "fixed per image, the same every epoch" not in helps["--mask-seed"]
    assert "--no-redraw-masks" in helps["--mask-seed"]
    assert parser.get_default("redraw_masks") is True and "(default: --redraw-masks)" in helps["--no-redraw-masks"]
    points = pointcloud_task.build_train_parser()
    assert any("authors' ScanObjectNN recipe" in (g.title or "") for g in points._action_groups)


def test_visualize_clusters_has_threads():
    from pointcoc.commands.visualize_clusters import build_parser
    assert build_parser().parse_args(["ck.pt", "digits:0", "--threads", "2"]).threads == 2


@pytest.mark.parametrize("script, command", [("train_scanobjectnn.py", "train"), ("train_pixels.py", "train-pixels"),
                                             ("evaluate.py", "evaluate"), ("plot_runs.py", "plot-runs")])
def test_scripts_are_the_subcommands(script, command):
    """The scripts stay (the mission names scripts/train_scanobjectnn.py) and print the subcommand's own help."""
    script_help = run_python([ROOT / "scripts" / script, "--help"], timeout=120)
    command_help = run_python(["-m", "pointcoc", command, "--help"], timeout=120)
    assert script_help.returncode == 0 and command_help.returncode == 0
    assert script_help.stdout == command_help.stdout


# ---------------------------------------------------------------- recipes


def _parse(command, argv):
    parser = (pixel_task if command == "train-pixels" else pointcloud_task).build_train_parser()
    from pointcoc.engine.recipes import parse_with_recipe
    return parse_with_recipe(parser, argv, command)


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_parses_and_sets_what_it_says(name):
    path, data = load_recipe(name)
    args = _parse(data["command"], ["--config", name])
    assert args.recipe == name
    for key, value in data["args"].items():
        dest = "fmt" if key == "format" else key
        assert getattr(args, dest) == value, (name, key)


@pytest.mark.parametrize("model, epochs", [("pointmlp", 200), ("pointmlp_elite", 200), ("pointmlp_coc", 250)])
def test_scanobjectnn_recipes_are_the_authors_defaults(model, epochs):
    """Each published recipe equals the command's defaults for that model (docs/training.md's table)."""
    from_file = vars(_parse("train", ["--config", f"scanobjectnn_{model}"]))
    from_flags = vars(_parse("train", ["--model", model, "--epochs", str(epochs),
                                       "--output", f"runs/scanobjectnn_{model}"]))
    from_file.pop("recipe"), from_flags.pop("recipe")
    assert from_file == from_flags


def test_demo_recipe_is_the_demo_command_the_docs_spell_out():
    old = ("--dataset modelnet10 --model pointmlp_elite --num-points 128 --epochs 20 --batch-size 32 --lr 0.1 --amp "
           "--workers 0 --seed 0 --threads 2 --output runs/demo").split() + ["--model-kwargs", '{"k_neighbors": 16}']
    a, b = vars(_parse("train", ["--config", "demo"])), vars(_parse("train", old))
    a.pop("recipe"), b.pop("recipe")
    assert a == b


def test_flags_override_the_recipe():
    args = _parse("train", ["--config", "demo", "--epochs", "3", "--lr", "0.2"])
    assert (args.epochs, args.lr, args.num_points) == (3, 0.2, 128)


def _recipe(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("body, message", [
    ('command = "train"\n[args]\nlearning_rate = 0.1\n', "has no option 'learning_rate'"),
    ('command = "train"\n[args]\nlr = "fast"\n', "invalid float value: 'fast'"),
    ('command = "train"\n[args]\namp = "yes"\n', "amp is a switch"),
    ('command = "train"\n[args]\nepochs = 0\n', "epochs"),
    ('command = "train-pixels"\n[args]\nepochs = 2\n', "recipe for `pointcoc train-pixels`"),
    ('command = "train"\nargs = 3\n', "[args] table"),
    ('command = "train"\n[args\n', "not a valid TOML file"),
    ('command = "train"\nlr = 0.1\n', "unknown top-level keys ['lr']"),
])
def test_a_bad_recipe_is_a_usage_error_naming_the_file(tmp_path, capsys, body, message):
    """Exit 2 with one message naming the file, before anything is trained or written."""
    path = _recipe(tmp_path, body)
    with pytest.raises(SystemExit) as done:
        main(["train", "--config", path, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert message in err and path in err, err
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_name_lists_the_shipped_ones(capsys):
    with pytest.raises(SystemExit):
        _parse("train", ["--config", "no_such_recipe"])
    err = capsys.readouterr().err
    assert all(name in err for name in list_recipes())


def test_a_run_records_its_recipe_and_resolved_values_and_resume_checks_them(tmp_path):
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, 'command = "train-pixels"\n[args]\ndataset = "digits"\nformat = "discrete"\n'
                               'keep = 0.5\nmodel = "pointmlp_pixels_small"\nlr = 0.07\nseed = 4\n')
    argv = ["--config", recipe, "--output", str(out), *TINY_PIXELS]
    assert pixel_task.run_cli(pixel_task.train_main, pixel_task.build_train_parser(), argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"] == recipe and cfg["lr"] == 0.07 and cfg["seed"] == 4
    assert cfg["model"] == "pointmlp_pixels_small" and cfg["extra"]["format"] == "discrete"
    # the same values typed as flags resume it (the recipe's name may change, its values may not) ...
    flags = ["--dataset", "digits", "--format", "discrete", "--keep", "0.5", "--model", "pointmlp_pixels_small",
             "--lr", "0.07", "--seed", "4", "--output", str(out), *TINY_PIXELS]
    flags[flags.index("--epochs") + 1] = "2"
    resumed = pixel_task.run_cli(pixel_task.train_main, pixel_task.build_train_parser(),
                                 flags + ["--resume", str(out / "last.pt")])
    assert resumed == 0
    # ... another value is refused
    flags[flags.index("--lr") + 1] = "0.08"
    flags[flags.index("--epochs") + 1] = "3"
    assert pixel_task.run_cli(pixel_task.train_main, pixel_task.build_train_parser(),
                              flags + ["--resume", str(out / "last.pt")]) == 2


# ---------------------------------------------------------------- data locations


def test_shipped_sets_are_found_and_large_sets_follow_the_environment(tmp_path, monkeypatch):
    for name in locations.SHIPPED_SETS:
        assert (locations.shipped_set_dir(name) / "SOURCE.md").is_file(), name
    monkeypatch.setenv(locations.DATA_ENV_VAR, str(tmp_path / "mine"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as err:
        build_point_datasets("scanobjectnn")
    text = str(err.value)
    assert str(tmp_path / "mine" / "ScanObjectNN" / "h5_files" / "main_split") in text
    assert str(tmp_path / "data" / "ScanObjectNN" / "h5_files" / "main_split") in text
    assert "POINTCOC_DATA" in text and "--data-root" in text


def test_the_wheel_build_copies_exactly_the_shipped_sets():
    """setup.py cannot import the package (torch) to read SHIPPED_SETS: its own list must be the same."""
    import ast
    tree = ast.parse((ROOT / "setup.py").read_text())
    lists = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
             and any(getattr(t, "id", None) == "SHIPPED_SETS" for t in node.targets)]
    assert lists == [locations.SHIPPED_SETS]


def test_a_large_set_under_pointcoc_data_is_used(tmp_path, monkeypatch):
    """ModelNet40's PointNet layout under $POINTCOC_DATA (written from the shipped modelnet10's files, labels
    kept) is loaded, ahead of the checkout's data/modelnet40_1024."""
    folder = tmp_path / "mine" / "modelnet40_ply_hdf5_2048"
    folder.mkdir(parents=True)
    shipped = locations.shipped_set_dir("modelnet10")
    shutil.copy(shipped / "modelnet10_train.h5", folder / "ply_data_train0.h5")
    shutil.copy(shipped / "modelnet10_test.h5", folder / "ply_data_test0.h5")
    (folder / "shape_names.txt").write_text("".join(f"c{i}\n" for i in range(40)))
    monkeypatch.setenv(locations.DATA_ENV_VAR, str(tmp_path / "mine"))
    monkeypatch.chdir(tmp_path)
    train, test, names = build_point_datasets("modelnet40", num_points=64)
    ref_train, ref_test, _ = build_point_datasets("modelnet10", num_points=64)
    assert len(names) == 40 and torch.equal(train.points, ref_train.points)
    assert torch.equal(test.labels, ref_test.labels)
    assert train.source.startswith(f"ModelNet40 from {folder} (ply_hdf5_2048 layout")


def test_a_packaged_data_folder_wins_over_the_checkout(tmp_path, monkeypatch):
    """In a wheel the data lie in pointcoc/_data: shipped_data_dir must return that folder when it exists."""
    fake_pkg = tmp_path / "pointcoc"
    (fake_pkg / "_data" / "mnist5k").mkdir(parents=True)
    monkeypatch.setattr(locations.resources, "files", lambda package: fake_pkg)
    assert locations.shipped_set_dir("mnist5k") == fake_pkg / "_data" / "mnist5k"
    with pytest.raises(FileNotFoundError) as err:
        pointcoc.data.load_image_dataset("mnist5k")
    assert str(fake_pkg / "_data" / "mnist5k" / "mnist_5k.csv.gz") in str(err.value)
    assert "reinstall pointcoc" in str(err.value)


# ---------------------------------------------------------------- trained weights


def test_shipped_weights_have_cards_whose_sha256_matches():
    tags = pretrained_mod.list_pretrained()
    assert set(pretrained_mod.DEFAULT_TAGS.items()) <= {tuple(t.split(".", 1)) for t in tags}
    for tag in tags:
        card = pretrained_mod.pretrained_card(tag)
        weights = Path(card["card_path"]).with_name(card["file"])
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["sha256"]
        for key in ("data", "recipe", "config", "train_command", "seed", "metrics", "protocol", "evaluate_command"):
            assert key in card, (tag, key)
        assert card["config"]["recipe"] == card["recipe"] and card["recipe"] in list_recipes()
        assert card["config"]["select_on_test"] is False


@pytest.mark.parametrize("tag, test_samples, least_oa", [
    ("pointmlp_coc_pixels_small.digits", 359, 95),
    pytest.param("pointmlp_coc_pixels.mnist5k_discrete25", 1000, 80, marks=pytest.mark.slow),
    pytest.param("pointmlp_elite.modelnet40", 2468, 85, marks=pytest.mark.slow),  # the checkout's data/modelnet40_1024
])
def test_shipped_weights_reproduce_their_card_accuracy(tmp_path, tag, test_samples, least_oa):
    """`pointcoc evaluate --pretrained` on the test split gives the accuracy the card states (to one sample)."""
    card = pretrained_mod.pretrained_card(tag)
    out = tmp_path / "m.json"
    assert main(["evaluate", "--pretrained", tag, "--threads", "1", "--progress", "none", "--json", str(out)]) == 0
    measured = json.loads(out.read_text())
    assert measured["count"] == card["data"]["test_samples"] == test_samples
    # Bitwise on the machine that wrote the card; another CPU's float rounding may flip one borderline sample.
    one_sample = 100.0 / test_samples
    assert measured["oa"] == pytest.approx(card["metrics"]["oa"], abs=one_sample + 1e-9)
    assert card["metrics"]["oa"] > least_oa  # a model worth shipping


def test_votes_are_refused_for_pixel_set_models(capsys):
    """The vote's per-axis rescaling suits point clouds, not a pixel grid (it took the digits weights from 98.3 to
    92.8 %): a pixel-set checkpoint with --votes > 1 is an error that says so, before any evaluation."""
    code = main(["evaluate", "--pretrained", "pointmlp_coc_pixels_small.digits", "--votes", "10", "--threads", "1",
                 "--progress", "none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--votes 10: test-time voting rescales each axis of a point cloud" in err and "--votes 1" in err


@pytest.mark.parametrize("fmt", ["regular", "discrete"])
def test_shipped_weights_give_the_same_logits_on_every_backend(one_thread, fmt):
    """Pixel grids are full of equal distances: every backend must keep the same neighbours among them,
    or weights trained with one backend lose accuracy on another (CI once measured 92.2 % vs the card's 98.3 %)."""
    from pointcoc.bench.ops_rows import pixel_set_batch
    from pointcoc.ops import available_backends, use_backend

    model = pointcoc.create_model("pointmlp_coc_pixels_small", pretrained=True).eval()
    xyz, lengths = pixel_set_batch(fmt, 8, 8, batch=6, keep=0.5, seed=1)
    feats = torch.rand(xyz.shape[0], xyz.shape[1], 1, generator=torch.Generator().manual_seed(0))
    logits = {}
    for backend in [b for b in available_backends("knn") if b not in ("pytorch3d", "triton", "triton-cells")]:
        with use_backend(backend), torch.no_grad():
            logits[backend] = model(xyz, feats, lengths=lengths)
    assert len(logits) >= 2
    for backend, out in logits.items():
        assert torch.equal(out, logits["torch"]), backend


def test_pretrained_spellings_agree_and_set_pretrained_cfg():
    a = pointcoc.create_model("pointmlp_coc_pixels_small", pretrained=True)
    b = pointcoc.create_model("pointmlp_coc_pixels_small", pretrained="digits")
    c = pointcoc.create_model("pointmlp_coc_pixels_small.digits")
    for m in (b, c):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), m.state_dict().values()))
    assert a.pretrained_cfg["tag"] == "pointmlp_coc_pixels_small.digits"
    assert a.pretrained_cfg["sha256"] == a.pretrained_cfg["card"]["sha256"]
    fresh = pointcoc.create_model("pointmlp_coc_pixels_small", num_classes=10, in_channels=1, coord_dim=2)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), fresh.state_dict().values()))


def test_pretrained_with_other_num_classes_keeps_the_features(one_thread):
    a = pointcoc.create_model("pointmlp_coc_pixels_small", pretrained=True).eval()
    b = pointcoc.create_model("pointmlp_coc_pixels_small", pretrained=True, num_classes=3).eval()
    xyz, feats = torch.rand(2, 64, 2), torch.rand(2, 64, 1)
    with torch.no_grad():
        assert b(xyz, feats).shape == (2, 3)
        assert torch.equal(a.forward_features(xyz, feats), b.forward_features(xyz, feats))


def test_damaged_or_wrong_weights_are_refused(tmp_path, monkeypatch):
    src = pretrained_mod.pretrained_card("pointmlp_coc_pixels_small.digits")
    cache = tmp_path / "cache"
    cache.mkdir()
    weights = Path(src["card_path"]).with_name(src["file"])
    shutil.copy(weights, cache / "pointmlp_coc_pixels_small.broken.pt")
    card = {k: v for k, v in src.items() if k != "card_path"}
    card.update(tag="pointmlp_coc_pixels_small.broken", file="pointmlp_coc_pixels_small.broken.pt")
    (cache / "pointmlp_coc_pixels_small.broken.json").write_text(json.dumps(card))
    monkeypatch.setenv(pretrained_mod.WEIGHTS_ENV_VAR, str(cache))
    assert pointcoc.create_model("pointmlp_coc_pixels_small", pretrained="broken") is not None
    with open(cache / "pointmlp_coc_pixels_small.broken.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="SHA-256"):
        pointcoc.create_model("pointmlp_coc_pixels_small", pretrained="broken")
    with pytest.raises(ValueError, match="no trained weights 'pointmlp_coc_pixels_small.nope'"):
        pointcoc.create_model("pointmlp_coc_pixels_small", pretrained="nope")
    with pytest.raises(ValueError, match="no default trained weights"):
        pointcoc.create_model("pointmlp_coc", pretrained=True)
    with pytest.raises(ValueError, match="is a folder"):
        pointcoc.create_model("pointmlp_elite", pretrained=str(tmp_path) + "/")
    torch.save({"net": {"w": torch.zeros(1)}, "epoch": 3}, tmp_path / "authors.pth")
    with pytest.raises(ValueError, match="load_authors_checkpoint"):
        pointcoc.create_model("pointmlp_elite", pretrained=tmp_path / "authors.pth")


def test_export_weights_round_trip_through_the_cache(tmp_path, monkeypatch, capsys):
    """A run's checkpoint -> export-weights -> create_model(pretrained=tag): the checkpoint's weights, and a card
    whose accuracy is `pointcoc evaluate`'s on the same checkpoint."""
    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--format", "discrete", "--keep", "0.5", "--model", "pointmlp_pixels_small",
            "--output", str(out), *TINY_PIXELS]
    argv[argv.index("--limit-val-batches"):argv.index("--limit-val-batches") + 2] = []
    assert pixel_task.run_cli(pixel_task.train_main, pixel_task.build_train_parser(), argv) == 0
    monkeypatch.setenv(pretrained_mod.WEIGHTS_ENV_VAR, str(tmp_path / "cache"))
    assert main(["export-weights", str(out / "last.pt"), "--tag", "mine", "--progress", "none"]) == 0
    assert main(["export-weights", str(out / "last.pt"), "--tag", "a.b"]) == 2
    model = pointcoc.create_model("pointmlp_pixels_small", pretrained="mine")
    ref = build_model_from_checkpoint(load_checkpoint(out / "last.pt"))
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), ref.state_dict().values()))
    card = pretrained_mod.pretrained_card("pointmlp_pixels_small.mine")
    assert main(["evaluate", str(out / "last.pt"), "--json", str(tmp_path / "e.json"), "--progress", "none"]) == 0
    measured = json.loads((tmp_path / "e.json").read_text())
    assert card["metrics"]["oa"] == pytest.approx(measured["oa"], abs=1e-9) and card["data"]["test_samples"] == 359
    assert card["seed"] == 0 and card["data"]["format"] == "discrete" and card["epochs_trained"] == 1
    from_path = pointcoc.create_model("pointmlp_pixels_small", pretrained=out / "last.pt")
    assert all(torch.equal(x, y) for x, y in zip(from_path.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(ValueError, match="checkpoint of model 'pointmlp_pixels_small'"):
        pointcoc.create_model("pointmlp_coc_pixels_small", pretrained=out / "last.pt")
    capsys.readouterr()
    assert main(["weights"]) == 0
    assert "pointmlp_pixels_small.mine" in capsys.readouterr().out


def test_export_weights_neither_shadows_shipped_weights_nor_replaces_its_own_silently(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--format", "discrete", "--keep", "0.5", "--model", "pointmlp_pixels_small",
            "--output", str(out), *TINY_PIXELS]
    assert pixel_task.run_cli(pixel_task.train_main, pixel_task.build_train_parser(), argv) == 0
    cache, shipped = tmp_path / "cache", tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "pointmlp_pixels_small.taken.json").write_text("{}")
    monkeypatch.setenv(pretrained_mod.WEIGHTS_ENV_VAR, str(cache))
    monkeypatch.setattr(pretrained_mod, "shipped_dir", lambda: shipped)
    export = ["export-weights", str(out / "last.pt"), "--progress", "none", "--tag"]
    capsys.readouterr()
    assert main([*export, "taken"]) == 2
    assert "pointcoc ships weights 'pointmlp_pixels_small.taken'" in capsys.readouterr().err
    assert not cache.exists()
    assert main([*export, "mine"]) == 0
    first = (cache / "pointmlp_pixels_small.mine.json").read_text()
    capsys.readouterr()
    assert main([*export, "mine"]) == 2
    assert f"{cache / 'pointmlp_pixels_small.mine.json'} already exists: pass --overwrite" in capsys.readouterr().err
    assert (cache / "pointmlp_pixels_small.mine.json").read_text() == first
    assert main([*export, "mine", "--overwrite"]) == 0
    (tmp_path / "file").write_text("x")
    assert main([*export, "other", "--out", str(tmp_path / "file" / "w")]) == 2
    assert f"--out {tmp_path / 'file' / 'w'}: {tmp_path / 'file'} is a file" in capsys.readouterr().err
    # one damaged card: `pointcoc weights` lists the others, names the broken file and exits 2
    (cache / "pointmlp_pixels_small.bad.json").write_text("not json")
    (cache / "pointmlp_pixels_small.old.json").write_text('{"model": "pointmlp_pixels_small"}')
    capsys.readouterr()
    assert main(["weights"]) == 2
    listed = capsys.readouterr()
    assert "pointmlp_pixels_small.mine" in listed.out and "discrete (keep 0.5)" in listed.out
    assert f"the model card {cache / 'pointmlp_pixels_small.bad.json'} is damaged: not a JSON file" in listed.err
    assert "pointmlp_pixels_small.old.json is damaged: it lacks model_kwargs, file, sha256" in listed.err


# ---------------------------------------------------------------- metadata


def test_version_license_changelog_and_typing_marker():
    assert metadata.version("pointcoc") == pointcoc.__version__
    assert f"## {pointcoc.__version__} " in (ROOT / "CHANGELOG.md").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    meta = metadata.metadata("pointcoc")
    assert meta["License-Expression"] == "MIT" or meta["License"] == "MIT"
    assert (Path(pointcoc.__file__).parent / "py.typed").is_file()
    assert "pointcoc" in [ep.name for ep in metadata.entry_points(group="console_scripts")]
    text = (ROOT / "pyproject.toml").read_text()
    assert 'version = "' not in text.split("[tool.setuptools.dynamic]")[0]  # written only in pointcoc/_version.py
