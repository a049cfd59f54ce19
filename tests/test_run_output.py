"""What a training run shows while it runs (progress modes) and draws (curves.png)."""
import io
import json

import pytest
from PIL import Image

from pointcoc.engine import fit
from pointcoc.engine.progress import format_epoch, resolve_progress

from script_checks import ROOT, lines, run_python
from test_engine import NAMES, TinyPointNet, config, datasets


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_resolve_progress_auto_follows_the_terminal_and_rejects_unknown_modes():
    assert resolve_progress("auto", _Stream(True)) == "bar"
    assert resolve_progress("auto", _Stream(False)) == "line"
    assert resolve_progress("auto", object()) == "line"  # a stream without isatty is no terminal
    for mode in ("bar", "line", "none"):
        assert resolve_progress(mode, _Stream(False)) == mode
    assert resolve_progress(False) == "none"
    with pytest.raises(ValueError, match="progress must be one of"):
        resolve_progress("bars")


def test_format_epoch_gives_every_split_in_order():
    rec = {"epoch": 3, "lr": 0.0488, "train_loss": 3.7404, "train_oa": 8.93, "train_macc": 5.22,
           "val_loss": 2.5, "val_oa": 50.0, "val_macc": 41.66, "test_loss": 8.0396, "test_oa": 3.45,
           "test_macc": 5.0, "epoch_time_s": 6.91}
    assert format_epoch(rec, 20) == ("epoch 3/20 | train loss 3.740 OA 8.9% mAcc 5.2% | val loss 2.500 OA 50.0% "
                                     "mAcc 41.7% | test loss 8.040 OA 3.5% mAcc 5.0% | lr 0.0488  6.9 s")


def test_fit_prints_one_line_per_epoch_and_redraws_curves_after_every_epoch(tmp_path, capsys, monkeypatch):
    from pointcoc.engine import loop

    drawn = []

    def spy(runs, path, title=""):
        drawn.append((path, [dict(r) for recs in runs.values() for r in recs]))
        return real(runs, path, title)

    real = loop.plot_curves
    monkeypatch.setattr(loop, "plot_curves", spy)
    train, test = datasets()
    fit(TinyPointNet(), train, test, config(epochs=2), tmp_path, NAMES, progress="line")
    out, err = capsys.readouterr()
    recs = lines(tmp_path / "metrics.jsonl")
    assert [line for line in out.splitlines() if line.startswith("epoch ")] == [format_epoch(r, 2) for r in recs]
    assert "\r" not in err and "RESULT [final epoch" in out
    assert [p for p, _ in drawn] == [tmp_path / "curves.png"] * 2
    assert [r for _, r in drawn] == [recs[:1], recs]  # each epoch's picture holds every epoch so far
    assert Image.open(tmp_path / "curves.png").size[0] > 0


@pytest.mark.parametrize("mode", ["bar", "none"])
def test_fit_progress_bar_and_none(mode, tmp_path, capsys):
    train, test = datasets()
    fit(TinyPointNet(), train, test, config(epochs=1), tmp_path, NAMES, progress=mode)
    out, err = capsys.readouterr()
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert epoch_lines == ([format_epoch(lines(tmp_path / "metrics.jsonl")[0], 1)] if mode == "bar" else [])
    assert ("\r" in err) == (mode == "bar")  # tqdm redraws its bar with carriage returns
    assert "RESULT [final epoch" in out


def _records(n, shift=0.0, val=True):
    recs = []
    for e in range(1, n + 1):
        r = {"epoch": e, "lr": 0.1 / e}
        for i, split in enumerate(("train", "val", "test") if val else ("train", "test")):
            r.update({f"{split}_loss": 2.0 / e + i + shift, f"{split}_oa": 10.0 * e + i + shift,
                      f"{split}_macc": 5.0 * e + i + shift})
        recs.append(r)
    return recs


def test_curves_figure_draws_each_run_split_and_metric():
    from pointcoc.viz.curves import PANELS, curves_figure

    runs = {"a": _records(4), "b": _records(3, shift=1.0, val=False)}
    fig = curves_figure(runs)
    panels, lr_axis = fig.axes[:len(PANELS)], fig.axes[len(PANELS)]
    for ax, (key, _) in zip(panels, PANELS):
        drawn = [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]
        expected = [([r["epoch"] for r in recs], [r[f"{split}_{key}"] for r in recs])
                    for recs in runs.values() for split in ("train", "val", "test") if f"{split}_{key}" in recs[0]]
        assert drawn == expected, key
    assert [list(line.get_ydata()) for line in lr_axis.get_lines()] == [[r["lr"] for r in recs] for recs in runs.values()]
    assert panels[0].get_yscale() == "log"


def test_plot_runs_script_overlays_runs_and_rejects_bad_input(tmp_path, capsys):
    for name, recs in (("s0", _records(3)), ("s1", _records(3, shift=2.0))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    script = ROOT / "scripts" / "plot_runs.py"
    out = tmp_path / "runs.png"
    proc = run_python([script, tmp_path / "s0", tmp_path / "s1", "--labels", "seed 0", "seed 1", "--output", out])
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size[0] > Image.open(out).size[1]
    from pointcoc.commands.plot_runs import main  # the error paths in this process (the script wraps it)
    (tmp_path / "s1" / "metrics.jsonl").write_text("{broken\n")
    for argv, message in (([tmp_path / "s0", tmp_path / "nope"], "no metrics.jsonl at"),
                          ([tmp_path / "s0", "--labels", "a", "b"], "labels must name each run"),
                          ([tmp_path / "s1"], "line 1 is not JSON")):
        assert main([*map(str, argv), "--output", str(out)]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("first, last", [(2.3, 1.9), (3.6, 0.3), (1.2, 1.0), (2.1, 0.9), (60.0, 0.02), (0.08, 0.05)])
def test_loss_axis_has_three_labelled_ticks_for_any_range(first, last):
    """Over a few epochs the loss may barely move (2.3 -> 1.9) or fall 10x; the log axis still reads."""
    from pointcoc.viz.curves import curves_figure

    recs = [{"epoch": e, "lr": 0.01, "train_loss": first * (last / first) ** (e / 4), "test_loss": first * 1.02
             * (last / first) ** (e / 4)} for e in range(5)]
    fig = curves_figure({"run": recs})
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    labelled = [(t.get_position()[1], t.get_text()) for t in ax.yaxis.get_majorticklabels()
                if t.get_visible() and t.get_text() and lo <= t.get_position()[1] <= hi]
    assert 3 <= len(labelled) <= 8, labelled
    assert len({text for _, text in labelled}) == len(labelled)  # distinct labels
    assert all(abs(float(text) - pos) <= 1e-9 + 1e-6 * pos for pos, text in labelled)  # each label says its place
