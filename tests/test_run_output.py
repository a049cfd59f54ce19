"""What a training run shows while it runs (progress modes) and draws (curves.png)."""
import io

import pytest

from pointcoc.engine import fit
from pointcoc.engine.progress import format_epoch, resolve_progress

from script_checks import lines
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


@pytest.mark.parametrize("mode", ["auto", "bar", "line", "none"])
def test_fit_prints_bars_or_one_line_per_epoch(mode, tmp_path, capsys):
    train, test = datasets()
    fit(TinyPointNet(), train, test, config(epochs=2), tmp_path, NAMES, progress=mode)
    out, err = capsys.readouterr()
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    expected = [] if mode == "none" else [format_epoch(r, 2) for r in lines(tmp_path / "metrics.jsonl")]
    assert epoch_lines == expected
    assert ("\r" in err) == (mode == "bar")  # captured stderr is no terminal: auto means line
    assert "RESULT [final epoch" in out
