"""Per-model recipe defaults: the number of epochs of the authors' script for each model."""
import argparse
import json

import pytest

from pointcoc.engine.config import AUTHORS_EPOCHS, TrainConfig, add_training_args, config_from_args
from pointcoc.engine.pointcloud_task import build_train_parser


@pytest.mark.parametrize("model,epochs", [("pointmlp", 200), ("pointmlp_elite", 200), ("pointmlp_coc", 250),
                                          ("pointmlp_pixels", 200)])
def test_epochs_default_to_the_authors_script_for_the_model(model, epochs):
    assert TrainConfig(model=model).epochs == epochs
    args = build_train_parser().parse_args(["--model", model])
    assert config_from_args(args).epochs == epochs
    args = build_train_parser().parse_args(["--model", model, "--epochs", "7"])
    assert config_from_args(args).epochs == 7
    assert TrainConfig.from_dict(TrainConfig(model=model).to_dict()).epochs == epochs


def test_other_recipe_items_are_the_same_for_every_published_model():
    base = {k: v for k, v in TrainConfig(model="pointmlp").to_dict().items() if k not in ("model", "epochs")}
    for model in AUTHORS_EPOCHS:
        assert {k: v for k, v in TrainConfig(model=model).to_dict().items() if k not in ("model", "epochs")} == base


def test_a_script_with_its_own_defaults_keeps_its_epochs():
    parser = add_training_args(argparse.ArgumentParser(), defaults=TrainConfig(model="auto", epochs=30))
    assert config_from_args(parser.parse_args([])).epochs == 30


def test_seeds_train_one_run_per_seed_and_summarize_them(tmp_path, one_thread):
    """On the shipped real ModelNet40 subset: a tiny model, one short epoch per seed."""
    import statistics

    import torch

    from script_checks import assert_run_outputs

    from pointcoc.engine.pointcloud_task import run_cli, train_main

    def train(argv):
        return run_cli(train_main, build_train_parser(), list(map(str, argv)))

    fast = ["--dataset", "modelnet10", "--model", "pointmlp_elite", "--model-kwargs",
            '{"embed_dim": 8, "k_neighbors": 4, "res_expansion": 0.25}', "--num-points", "64", "--batch-size", "8",
            "--epochs", "1", "--limit-train-batches", "3", "--limit-val-batches", "4", "--workers", "0",
            "--device", "cpu", "--lr", "0.05"]
    assert train([*fast, "--seeds", "0", "1", "--output", tmp_path / "multi"]) == 0
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    results = [json.loads((tmp_path / "multi" / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    for s in (0, 1):
        assert_run_outputs(tmp_path / "multi" / f"seed{s}", epochs=1, n_eval=32, num_classes=10)
    oa = [r["test_oa"] for r in results]
    assert summary["seeds"] == [0, 1]
    assert summary["oa"]["mean"] == pytest.approx(statistics.fmean(oa))
    assert summary["oa"]["std"] == pytest.approx(statistics.stdev(oa))
    assert summary["macc"]["mean"] == pytest.approx(statistics.fmean(r["test_macc"] for r in results))
    assert f"{summary['oa']['mean']:.2f} ± {summary['oa']['std']:.2f}" in (tmp_path / "multi" / "summary.md").read_text()
    weights = [torch.load(tmp_path / "multi" / f"seed{s}" / "last.pt", weights_only=True)["model"] for s in (0, 1)]
    assert not torch.equal(weights[0]["embedding.linear.weight"], weights[1]["embedding.linear.weight"])
    # seed 1 of the several-seed run is the run of --seed 1 alone
    assert train([*fast, "--seed", "1", "--output", tmp_path / "single"]) == 0
    alone = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(alone[k], weights[1][k]) for k in alone)


def test_seed_summary_rejects_duplicate_seeds_and_mixed_protocols():
    from pointcoc.engine.seeds import summarize_seed_runs

    run = dict(output="o", epoch=1, test_oa=50.0, test_macc=40.0, protocol="final epoch")
    with pytest.raises(ValueError, match=r"each seed must appear once; got seeds \[0, 0\]"):
        summarize_seed_runs([{**run, "seed": 0}, {**run, "seed": 0}])
    with pytest.raises(ValueError, match="one evaluation protocol"):
        summarize_seed_runs([{**run, "seed": 0}, {**run, "seed": 1, "protocol": "PAPER PROTOCOL"}])
    with pytest.raises(ValueError, match="at least one finished run"):
        summarize_seed_runs([])
    assert summarize_seed_runs([{**run, "seed": 3}])["oa"] == {"mean": 50.0, "std": 0.0}


def test_modelnet40_recipes_are_one_recipe_for_every_model():
    """The authors train every model with one classification_ModelNet40/main.py (docs/training.md, "ModelNet40
    recipe"): the three shipped recipes hold its values and differ only in the model and the output folder."""
    from pointcoc.engine.recipes import load_recipe

    authors = dict(dataset="modelnet40", num_points=1024, epochs=300, batch_size=32, eval_batch_size=16, lr=0.1,
                   min_lr_ratio=0.05, momentum=0.9, weight_decay=2e-4, label_smoothing=0.2, clip_grad_norm=1.0,
                   workers=8)
    recipes = {m: load_recipe(f"modelnet40_{m}")[1] for m in ("pointmlp", "pointmlp_elite", "pointmlp_coc")}
    for model, data in recipes.items():
        assert data["command"] == "train"
        args = dict(data["args"])
        assert args.pop("model") == model
        assert args.pop("output") == f"runs/modelnet40_{model}"
        assert {k: args[k] for k in authors} == authors, model
        # min lr = lr * ratio is the authors' --min_lr 0.005
        assert args["lr"] * args["min_lr_ratio"] == pytest.approx(0.005)
    rest = [{k: v for k, v in d["args"].items() if k not in ("model", "output")} for d in recipes.values()]
    assert rest[0] == rest[1] == rest[2]


def test_a_shipped_recipe_name_wins_over_a_folder_of_that_name_and_a_bare_folder_is_refused(tmp_path, monkeypatch):
    import pytest

    from pointcoc.engine.recipes import recipe_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # e.g. runs written with --output demo
    assert recipe_path("demo").name == "demo.toml" and recipe_path("demo").parent.name == "recipes"
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="--config mine: is a folder"):
        recipe_path("mine")
