"""scripts/pixel_experiments.py: resumable cells (skip finished, continue interrupted), summary, table, chart."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("pixel_experiments", ROOT / "scripts" / "pixel_experiments.py")
px = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(px)
from pointcoc.commands import visualize_clusters as vis  # noqa: E402
from pointcoc.viz.clusters import LEGEND_HEIGHT  # noqa: E402

FAST = ["--limit-train-batches", "2", "--limit-val-batches", "2", "--batch-size", "16"]


def _cells(epochs=2):
    plan = dict(dataset="digits", models=("convnet_pixels_small",), seeds=(0, 1), epochs=epochs,
                formats=(("discrete", 0.5),))
    return px.plan_cells(plan)


def test_finished_cells_are_skipped_and_interrupted_cells_resume(tmp_path, monkeypatch):
    cells = _cells()[:1]
    torch.set_num_threads(1)
    px.run_cells(cells, tmp_path / "ref", FAST)  # uninterrupted reference
    # interrupted after epoch 1, then the grid finishes it from last.pt
    px.run_cells(cells, tmp_path / "grid", FAST + ["--stop-after-epoch", "1"])
    out = tmp_path / "grid" / px.cell_name(**px._key(cells[0]))
    assert (out / "last.pt").is_file() and not px.finished(out, 2)
    px.run_cells(cells, tmp_path / "grid", FAST)
    ref = json.loads((tmp_path / "ref" / px.cell_name(**px._key(cells[0])) / "results.json").read_text())
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["epoch"] == 2 and px.finished(out, 2)
    assert resumed["confusion_matrix"] == ref["confusion_matrix"]
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # epoch 1 was not trained again
    # finished: nothing is trained again
    monkeypatch.setattr(px, "train_main", lambda args: pytest.fail(f"retrained {args.output}"))
    px.run_cells(cells, tmp_path / "grid", FAST)
    records = px.collect(tmp_path / "grid")
    assert [(r["model"], r["seed"], r["fmt"], r["keep"], r["test_oa"]) for r in records] == \
        [("convnet_pixels_small", 0, "discrete", 0.5, ref["test_oa"])]


def test_train_argv_passes_the_cell_to_train_pixels(tmp_path):
    cell = dict(dataset="modelnet_depth", fmt="rgbd", keep=1.0, model="pointmlp_pixels", seed=2, epochs=3)
    args = px.build_train_parser().parse_args(px.train_argv(cell, tmp_path, ["--lr", "0.1"]))
    assert (args.dataset, args.fmt, args.keep, args.model, args.seed, args.mask_seed, args.epochs, args.lr) == \
        ("modelnet_depth", "rgbd", None, "pointmlp_pixels", 2, 2, 3, 0.1)
    cell = dict(cell, fmt="masked", keep=0.25)
    args = px.build_train_parser().parse_args(px.train_argv(cell, tmp_path, []))
    assert (args.fmt, args.keep, args.resume) == ("masked", 0.25, None)


def _records(seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for fmt, keep in (("irregular", 0.5), ("regular", 1.0), ("discrete", 0.25), ("discrete", 0.5)):
        for model in px.SMALL:
            for s in range(3):
                records.append(dict(dataset="digits", fmt=fmt, keep=keep, model=model, seed=s, epochs=8,
                                    test_oa=float(rng.uniform(50, 99)), test_macc=float(rng.uniform(50, 99)),
                                    train_time_s=1.0))
    records.append(dict(records[0], dataset="modelnet_depth", fmt="rgbd", keep=1.0, model="pointmlp_pixels"))
    return records


def test_cells_with_other_training_flags_are_their_own_rows():
    records = _records()
    redrawn = [dict(r, train_args=["--redraw-masks"], test_oa=0.0) for r in records if r["fmt"] == "regular"]
    rows = px.summarize(records + redrawn)
    assert len(rows) == 4 * 3 + 1 + 3
    plain = [r for r in rows if r["fmt"] == "regular" and r["recipe"] == ""]
    assert len(plain) == 3 and all(r["oa_mean"] > 0 for r in plain)
    assert [r["oa_mean"] for r in rows if r["recipe"] == "--redraw-masks"] == [0.0, 0.0, 0.0]
    assert "regular (`--redraw-masks`)" in px.markdown_table(rows)
    cell = dict(dataset="digits", fmt="discrete", keep=0.5, model="convnet_pixels_small", seed=0, epochs=2,
                train_args=["--redraw-masks"])
    assert px.build_train_parser().parse_args(px.train_argv(cell, Path("x"), [])).redraw_masks is True
    assert px.build_train_parser().parse_args(px.train_argv(dict(cell, train_args=[]), Path("x"), [])).redraw_masks \
        is False


def test_summary_is_mean_and_sample_std_over_seeds():
    records = _records()
    rows = px.summarize(records)
    assert len(rows) == 4 * 3 + 1
    for row in rows:
        oa = [r["test_oa"] for r in records if r["dataset"] == row["dataset"] and r["fmt"] == row["fmt"]
              and r["keep"] == row["keep"] and px.family(r["model"]) == row["family"]]
        assert row["n"] == len(oa)
        assert row["oa_mean"] == pytest.approx(np.mean(oa))
        assert row["oa_std"] == (pytest.approx(np.std(oa, ddof=1)) if len(oa) > 1 else None)
    order = [(r["dataset"], r["fmt"], r["keep"]) for r in rows[::3]]
    assert order[:4] == [("digits", "regular", 1.0), ("digits", "discrete", 0.5), ("digits", "discrete", 0.25),
                         ("digits", "irregular", 0.5)]


def test_markdown_table_bolds_the_best_model_of_each_row():
    rows = px.summarize(_records(1))
    table = px.markdown_table(rows).strip().splitlines()
    assert table[0].split("|")[5:8] == [" PointMLP-CoC ", " PointMLP ", " ConvNet (zeros) "]
    body = table[2:]
    assert len(body) == 5
    for line, group in zip(body[:4], [rows[i : i + 3] for i in range(0, 12, 3)]):
        cells = [c.strip() for c in line.split("|")[5:8]]
        best = int(np.argmax([r["oa_mean"] for r in group]))
        assert [c.startswith("**") for c in cells] == [i == best for i in range(3)]
        for c, r in zip(cells, group):
            assert c.strip("*") == f"{r['oa_mean']:.1f} ± {r['oa_std']:.1f}"
    assert body[4].split("|")[5:8] == [" — ", " **" + f"{rows[12]['oa_mean']:.1f}" + "** ", " — "]


def test_report_writes_json_table_and_chart(tmp_path):
    cells = _cells(epochs=1)[:1]
    px.run_cells(cells, tmp_path / "runs", FAST)
    out = px.report(tmp_path / "runs", tmp_path / "a.json", tmp_path / "t.md", tmp_path / "c.png")
    data = json.loads((tmp_path / "a.json").read_text())
    assert len(data["cells"]) == 1 and data["cells"][0]["model"] == "convnet_pixels_small"
    result = json.loads((tmp_path / "runs" / px.cell_name(**px._key(cells[0])) / "results.json").read_text())
    assert data["cells"][0]["test_oa"] == result["test_oa"]
    assert (tmp_path / "t.md").read_text() == out and f"{result['test_oa']:.1f}" in out
    assert Image.open(tmp_path / "c.png").size[0] > 100
    with pytest.raises(ValueError, match="no finished cell"):
        px.report(tmp_path / "empty", tmp_path / "b.json", tmp_path / "t2.md", tmp_path / "c2.png")


def test_visualize_clusters_script(tmp_path, capsys):
    """Train a CoC pixel model for two batches, then draw two test images and an image file; bad input -> exit 2."""
    cell = dict(dataset="digits", fmt="discrete", keep=0.75, model="pointmlp_coc_pixels_small", seed=0, epochs=1)
    px.run_cells([cell], tmp_path / "runs", FAST)
    ckpt = tmp_path / "runs" / px.cell_name(**px._key(cell)) / "last.pt"
    Image.fromarray((np.eye(40) * 255).astype(np.uint8)).save(tmp_path / "diag.png")
    code = vis.main([str(ckpt), "digits:0", "digits:7", str(tmp_path / "diag.png"), "--output", str(tmp_path / "m.png")])
    assert code == 0
    png = Image.open(tmp_path / "m.png")
    assert png.size == (round(2.6 * 3 * 110), round((2.6 * 3 + 0.4 + LEGEND_HEIGHT) * 110))  # 3 images x (input + 2 layers)
    assert vis.main([str(ckpt), "mnist5k:0"]) == 2
    assert "the model expects (1, 8, 8)" in capsys.readouterr().err
    assert vis.main([str(ckpt), str(tmp_path / "missing.png")]) == 2
    assert "image file not found" in capsys.readouterr().err
    assert vis.main([str(ckpt), "digits:0", "--output", str(tmp_path)]) == 2  # checked before drawing
    assert f"--output {tmp_path} is a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_visualize_clusters_command_line(tmp_path):
    cell = dict(dataset="digits", fmt="regular", keep=1.0, model="pointmlp_coc_pixels_small", seed=0, epochs=1)
    px.run_cells([cell], tmp_path / "runs", FAST)
    ckpt = tmp_path / "runs" / px.cell_name(**px._key(cell)) / "last.pt"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "visualize_clusters.py"), str(ckpt), "digits:3",
                          "--output", str(tmp_path / "maps.png")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert Image.open(tmp_path / "maps.png").size == (round(2.6 * 3 * 110), round((2.6 + 0.4 + LEGEND_HEIGHT) * 110))
