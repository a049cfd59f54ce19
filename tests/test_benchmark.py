"""Benchmark helpers: timing pairs, memory accounting, table/JSON output, the script's arguments."""
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from pointcoc import bench as benchmark
from pointcoc.bench import Row, peak_cpu_memory, time_pair, to_json, to_markdown

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_peak_cpu_memory_follows_allocations_and_frees():
    mib = 2**20

    def work():
        a = torch.empty(4 * mib, dtype=torch.uint8)
        b = torch.empty(4 * mib, dtype=torch.uint8)
        del a
        c = torch.empty(8 * mib, dtype=torch.uint8)  # live: b + c = 12 MiB, never a + b + c
        return b, c

    peak = peak_cpu_memory(work)
    assert 12 * mib <= peak < 12.5 * mib
    assert peak_cpu_memory(lambda: None) < 1024


def test_peak_cpu_memory_sees_temporaries_inside_an_expression():
    x = torch.rand(512, 1, 3)
    y = torch.rand(1, 1024, 3)
    # (x - y) is 6 MiB and is freed once summed; the result is 2 MiB.
    peak = peak_cpu_memory(lambda: (x - y).square().sum(-1))
    assert 6 * 2**20 <= peak <= 16 * 2**20


def test_time_pair_orders_fast_and_slow():
    x = torch.rand(200, 200)
    fast, slow = time_pair(lambda: x + 1, lambda: [x @ x for _ in range(20)], repeat=3)
    assert 0 < fast < slow
    with pytest.raises(ValueError, match="repeat must be >= 3"):
        time_pair(lambda: None, lambda: None, repeat=0)


def test_timed_pairs_alternate_and_median_speedup_is_per_pair():
    calls = []
    pairs = benchmark.timed_pairs(lambda: calls.append("a"), lambda: calls.append("b"), repeat=3, warmup=1)
    assert calls == ["a", "b"] * 4 and len(pairs) == 3 and all(t > 0 for p in pairs for t in p)
    # per-pair ratios 2, 3, 10: their median is 3 (the ratio of the medians would be 4 / 1 = 4)
    assert benchmark.median_speedup([(1.0, 2.0), (1.0, 3.0), (2.0, 20.0)]) == pytest.approx(3.0)


def test_row_ratios_markdown_and_json(tmp_path):
    rows = [
        Row("FPS", "B=1", "numba", "torch loop", 0.01, 0.04),
        Row("kNN", "B=2", "numba", "cdist + topk", 0.02, 0.01, 2**20, 4 * 2**20, "note"),
    ]
    assert rows[0].time_ratio == pytest.approx(0.25) and rows[0].mem_ratio is None
    assert rows[1].mem_ratio == pytest.approx(0.25)
    table = to_markdown(rows).splitlines()
    assert len(table) == 4 and table[0].count("|") == table[2].count("|") == table[3].count("|")
    assert "| 10.0 | 40.0 | 0.25 |" in table[2]
    assert "| 1.0 | 4.0 | 0.250 | note |" in table[3]
    path = tmp_path / "rows.json"
    to_json(rows, str(path), {"command": "x"})
    data = json.loads(path.read_text())
    assert data["meta"]["command"] == "x" and data["rows"][1]["time_ratio"] == pytest.approx(2.0)


def test_fps_and_knn_rows_check_parity_and_measure_memory():
    (fps,) = [r for r in benchmark.bench_fps(quick=True, cases=[(2, 300, 40)]) if r.reference == "torch loop"]
    assert fps.note == "same indices" and fps.ours_s > 0 and fps.ref_s > 0
    rows = benchmark.bench_knn(quick=True, cases=[(2, 256, 2048, 8)])
    brute = [r for r in rows if r.reference == "cdist + topk"]
    assert brute and all(r.ours_mem is not None and r.ref_mem is not None for r in brute)
    assert brute[0].note.startswith("same distances")
    # cdist + topk holds the (2, 256, 2048) float32 matrix: 4 MiB at least.
    assert all(r.ref_mem >= 4 * 2**20 for r in brute)


def test_knn_density_rows_check_exactness_fit_exponents_and_time_fps():
    """The issue-30 section on tiny sizes: rows vs cKDTree, the grid alone, a scaling row, FPS rows."""
    pytest.importorskip("scipy.spatial")
    pytest.importorskip("numba")
    rows = benchmark.bench_knn_density(sizes={"outlier": (400, 800)}, grid=8, fps_case=(2500, 64), before_up_to=400)
    cases = [(r.group, r.reference) for r in rows]
    assert cases == [("kNN density", "cKDTree (workers=%d)" % torch.get_num_threads()),
                     ("kNN density", "grid alone (before)"), ("kNN density", cases[0][1]),
                     ("kNN density scaling", cases[0][1]), ("kNN density", cases[0][1]),
                     ("FPS density", "numba brute force")]
    tree_rows = [r for r in rows if r.group == "kNN density" and r.reference.startswith("cKDTree")]
    assert all("= torch reference" in r.note for r in tree_rows)
    assert rows[1].note == "same indices" and rows[-1].note == "same indices"
    assert rows[3].note.startswith("time ~ N^")


def test_density_sets_are_what_they_say():
    from pointcoc.bench.ops_rows import DENSITY_KINDS, density_set

    for kind in DENSITY_KINDS:
        xyz, lengths = density_set(kind, 1000, seed=1)
        assert xyz.shape == (1, 1000, 3) and lengths.tolist() == [1000] and bool(torch.isfinite(xyz).all())
    xyz, _ = density_set("outlier", 1000)
    assert int((xyz[0] == 100.0).all(-1).sum()) == 1
    xyz, _ = density_set("blob + sparse", 1000)
    assert int((xyz[0].abs() <= 0.01).all(-1).sum()) >= 900
    with pytest.raises(ValueError, match="kind must be one of"):
        density_set("gaussian", 100)


def test_script_writes_json_and_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "SECTIONS", {"fps": lambda device, quick, **cases: [Row("FPS", "tiny", "a", "b", 1.0, 2.0)]})
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--quick", "--json", str(out_json), "--markdown", str(out_md)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert done.value.code == 0
    assert json.loads(out_json.read_text())["rows"][0]["time_ratio"] == pytest.approx(0.5)
    assert "| FPS | tiny | a | b |" in out_md.read_text()
    assert "--quick" in capsys.readouterr().out


def test_script_rejects_unknown_section(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--only", "fps,nonsense"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert done.value.code == 2


def test_unavailable_section_is_reported_not_fatal(monkeypatch):
    def missing(device, quick):
        raise benchmark.SectionUnavailable("pointcoc.layers.context_cluster is not available")

    monkeypatch.setattr(benchmark, "SECTIONS", {"cc": missing, "fps": lambda device, quick, **cases: [Row("FPS", "t", "a", "b", 1.0, 1.0)]})
    rows, skipped = benchmark.run_all()
    assert len(rows) == 1 and "context_cluster is not available" in skipped["cc"]
    assert "Skipped section cc: pointcoc.layers.context_cluster" in to_markdown(rows, skipped)


def _toy_cluster(point_sim, point_val, center_sim, center_val, alpha, beta, lengths=None):
    """Each point takes its most similar center's value, scaled: enough to exercise the benchmark plumbing."""
    sim = torch.einsum("bnd,bmd->bnm", point_sim, center_sim)
    assign = sim.argmax(-1)
    picked = torch.gather(center_val, 1, assign[..., None].expand(-1, -1, center_val.shape[-1]))
    return torch.sigmoid(alpha * sim.amax(-1, keepdim=True) + beta) * picked + point_val, assign


def _toy_cluster_dense(point_sim, point_val, center_sim, center_val, alpha, beta, lengths=None):
    """The same through a dense (B, M, N, D) mask, like a dense reference."""
    sim = torch.einsum("bnd,bmd->bnm", point_sim, center_sim)
    mask = torch.nn.functional.one_hot(sim.argmax(-1), center_sim.shape[1]).permute(0, 2, 1).to(sim.dtype)
    picked = (mask[..., None] * center_val[:, :, None, :]).sum(1)
    return torch.sigmoid(alpha * sim.amax(-1, keepdim=True) + beta) * picked + point_val, sim.argmax(-1)


def test_context_cluster_rows_compare_values_time_and_memory():
    (row,) = benchmark.bench_context_cluster(quick=True, cases=[(1, 500, 20, 8)], functions=(_toy_cluster, _toy_cluster_dense))
    assert row.note == "same values and gradients"
    assert row.ours_mem < row.ref_mem  # the dense mask holds (1, 20, 500, 8) floats more
    assert row.ref_mem >= 20 * 500 * 8 * 4
    wrong = lambda *args: (_toy_cluster(*args)[0] * 2, None)  # noqa: E731
    (row,) = benchmark.bench_context_cluster(quick=True, cases=[(1, 100, 5, 4)], functions=(wrong, _toy_cluster_dense))
    assert row.note == "RESULTS DIFFER"


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    """The real ops sections through the script: parity notes hold and the fast paths are faster."""
    import subprocess

    out = tmp_path / "ops.json"
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--only", "fps,knn,gather", "--json", str(out)],
                   check=True, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert {r["group"] for r in rows} == {"FPS", "kNN", "gather"}
    assert all("DIFFER" not in r["note"] for r in rows)
    fps = [r for r in rows if r["group"] == "FPS" and r["reference"] == "torch loop"]
    assert len(fps) >= 1 and all(r["time_ratio"] < 1 for r in fps)  # --quick: one case per section


class _ToyPointNet(torch.nn.Module):
    """FPS + kNN grouping + a shared MLP + max pooling: the ops path of PointMLP in miniature."""

    def __init__(self, num_classes=15):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 32))
        self.head = torch.nn.Linear(32, num_classes)

    def forward(self, xyz, features=None, lengths=None):
        from pointcoc import ops

        centers = ops.gather(xyz, ops.farthest_point_sample(xyz, 32))
        _, idx = ops.knn(centers, xyz, 8)
        local = ops.gather(xyz, idx) - centers[:, :, None, :]
        return self.head(self.mlp(local).amax(2).amax(1))


def test_model_rows_train_and_compare_backends(monkeypatch):
    import pointcoc

    monkeypatch.setattr(pointcoc, "create_model", lambda name, num_classes: _ToyPointNet(num_classes), raising=False)
    rows = benchmark.bench_models(names=("toy",), batches=(2,), n_points=128)
    forward, step = rows
    assert forward.group == "model forward (eval)" and forward.note == "same logits"
    assert step.group == "model train step" and step.ours_mem > 0 and step.ref_mem > 0
    assert "samples/s" in step.note
    quick = benchmark.bench_models(names=("toy",), batches=(2,), n_points=128, quick=True)
    assert quick[1].ours_mem is None


def test_pointwise_rows_compare_equal_layers():
    rows = benchmark.bench_pointwise(quick=True, cases=[(2, 8, 50), (1, 16, 30)])
    assert [r.note for r in rows] == ["same outputs", "same outputs"]
    assert all(r.ours_s > 0 and r.ref_s > 0 for r in rows)


def test_transfer_rows_compare_equal_layers():
    rows = benchmark.bench_transfer(quick=True, cases=[(2, 10, 4, 8)])
    assert [r.note for r in rows] == ["same outputs"]


def test_masked_norm_rows_compare_equal_layers():
    rows = benchmark.bench_masked_norm(quick=True, cases=[(2, 6, 4, 8)])
    assert [r.note for r in rows] == ["same outputs"]


_TINY_COC = dict(k_neighbors=8, embed_dim=16)  # 128 points, narrow: the plumbing, not the speed


def test_model_vs_reference_rows_check_the_loss_and_time_both(one_thread):
    rows = benchmark.bench_model_vs_reference(batches=(2,), n_points=128, repeat=3, model_kwargs=_TINY_COC)
    assert [r.group for r in rows] == ["PointMLP-CoC train step", "PointMLP train step", "PointMLP-elite train step"]
    for row in rows:
        assert row.case == "B=2, N=128, 15 classes" and row.ours_s > 0 and row.ref_s > 0
        assert "first loss equal" in row.note, row.note
        speedup = float(row.note.split("x throughput")[0])
        assert speedup > 0 and "median of 3 pairs" in row.note
    with pytest.raises(ValueError, match="models must be a non-empty sequence of names from"):
        benchmark.bench_model_vs_reference(models=("pointmlp_cc",))
    with pytest.raises(ValueError, match="models must be a non-empty sequence of names from"):
        benchmark.reference_pair("pointnet", 2)


def test_run_all_passes_models_and_batches_to_the_model_sections_only(monkeypatch):
    seen = {}

    def section(name):
        def run(device, quick, **kwargs):
            seen[name] = kwargs
            return []
        return run

    monkeypatch.setattr(benchmark, "SECTIONS", {n: section(n) for n in ("fps", "model_vs_reference", "memory")})
    benchmark.run_all(quick=True, models=["pointmlp"], batches=[16, 32])
    assert seen["model_vs_reference"] == dict(models=["pointmlp"], batches=[16, 32])
    assert seen["memory"]["models"] == ["pointmlp"] and seen["memory"]["batches"] == [16, 32]
    assert "models" not in seen["fps"] and "batches" not in seen["fps"]
    benchmark.run_all(quick=True, only=["model_vs_reference"])
    assert seen["model_vs_reference"] == benchmark.QUICK_CASES["model_vs_reference"]
    with pytest.raises(ValueError, match="models must be"):
        benchmark.run_all(models=["pointnet"])
    with pytest.raises(ValueError, match="batches must be"):
        benchmark.run_all(batches=[0])


@pytest.mark.parametrize("option", [["--batches", "16,x"], ["--models", "pointmlp,pointnet"], ["--batches", "-2"]])
def test_script_rejects_bad_models_and_batches(monkeypatch, option):
    monkeypatch.setattr(benchmark, "SECTIONS", {"memory": lambda device, quick, **kwargs: []})
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--only", "memory"] + option)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert done.value.code == 2


def test_profile_model_vs_reference_reports_sections_and_restores_modules(monkeypatch, one_thread):
    made = []
    from pointcoc.bench import profiles

    original = profiles.reference_pair

    def keep(*args):
        pair = original(*args)
        made.extend(pair[:2])
        return pair

    monkeypatch.setattr(profiles, "reference_pair", keep)
    text = benchmark.profile_model_vs_reference(batch=2, n_points=128, model_kwargs=_TINY_COC, row_limit=5)
    assert text.count("forward time by section") == 2 and "== reference (published layout)" in text
    sections = [line for line in text.splitlines()
                if line.startswith(("  grouping", "  context clusters", "  pointwise MLP")) and line.endswith(" s")]
    assert len(sections) == 6
    assert all(float(line.split()[-2]) > 0 for line in sections)  # every section ran inside its range
    assert "matrix products / 1x1 convolutions" in text
    # the record_function wrappers are gone: forward is the class's again
    assert all(not {"forward", "index", "inverse_std"} & set(m.__dict__) for model in made for m in model.modules())


def test_plot_model_vs_reference_writes_png(tmp_path):
    rows = [Row("PointMLP-CoC train step", "B=16, N=1024, 15 classes", "pointcoc", "published layout", 1.0, 2.0),
            Row("PointMLP-CoC train step", "B=32, N=1024, 15 classes", "pointcoc", "published layout", 2.0, 3.5),
            Row("PointMLP train step", "B=16, N=1024, 15 classes", "pointcoc", "published layout", 1.5, 2.5)]
    path = tmp_path / "step.png"
    benchmark.plot_model_vs_reference(rows, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="PointMLP-CoC train step"):
        benchmark.plot_model_vs_reference([Row("FPS", "x", "a", "b", 1.0, 1.0)], str(path))


def test_memory_rows_measure_fresh_processes():
    from pointcoc.bench.memory import step_peak_memory

    (row,) = benchmark.bench_memory(models=("pointmlp_elite",), batches=(2,), n_points=256, memory_efficient=(False,))
    assert row.group == "train step peak memory" and row.case == "pointmlp_elite, B=2, N=256"
    # A step of either layout at least holds the embedding output (2, 256, 32) floats for backward.
    assert row.ours_mem > 2 * 256 * 32 * 4 and row.ref_mem > 2 * 256 * 32 * 4
    assert "tensors' peak" in row.note  # the smallest batch also gets the profiled tensor peak
    with pytest.raises(ValueError, match="layout must be one of"):
        step_peak_memory("pointmlp_elite", 2, layout="authors")


@pytest.mark.slow
def test_memory_efficient_step_holds_under_the_target_share_of_the_published_peak():
    """PointMLP-CoC, batch 8, 1024 points: the recomputing model's step peak is at most 0.35x the published
    layout's (issue 12's target; measured 0.20x)."""
    rows = benchmark.bench_memory(models=("pointmlp_coc",), batches=(8,))
    default, lean = rows
    assert default.ours_mem < default.ref_mem
    assert lean.ours_mem < 0.35 * lean.ref_mem and lean.ours_mem < 0.6 * default.ours_mem
