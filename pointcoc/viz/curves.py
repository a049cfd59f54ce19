"""Training curves: loss, OA and mAcc against epoch (learning rate on a second axis), one run or several overlaid.

The training engine rewrites ``curves.png`` next to ``metrics.jsonl`` after every epoch;
``scripts/plot_runs.py RUN [RUN ...]`` overlays several runs (seeds, models) in one picture.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .._atomic import save_png

__all__ = ["read_metrics", "curves_figure", "plot_curves", "plot_runs", "loss_ticks"]

SPLITS = ("train", "val", "test")
_STYLE = {"train": "--", "val": "-.", "test": "-"}  # line style per split
_SPLIT_COLOR = {"train": "C0", "val": "C2", "test": "C3"}  # colours per split when there is one run
PANELS = (("loss", "loss (train: label-smoothed)"), ("oa", "OA (%)"), ("macc", "mAcc (%)"))


def read_metrics(run) -> List[Dict]:
    """The records of a run's ``metrics.jsonl`` (``run`` is that file or the run folder), one per epoch.

    Raises:
        FileNotFoundError: if there is no metrics.jsonl.
        ValueError: if the file is not text or a line is not a JSON record with an integer ``epoch`` >= 1.
    """
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl at {path}: pass a run folder written by a training script")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a metrics file: not UTF-8 text ({err})") from None
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {i} is not JSON ({err})") from None
        if not isinstance(rec, dict) or "epoch" not in rec:
            raise ValueError(f"{path} line {i} is not a metrics record with an 'epoch'")
        epoch = rec["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"{path} line {i}: 'epoch' must be an integer >= 1; got {epoch!r}")
        records.append(rec)
    return records


def plot_curves(runs: Mapping[str, Sequence[Dict]], path, title: str = "") -> Path:
    """Write :func:`curves_figure` of ``runs`` as a PNG at ``path``; returns the path."""
    return save_png(curves_figure(runs, title), Path(path), dpi=100)


def curves_figure(runs: Mapping[str, Sequence[Dict]], title: str = ""):
    """A matplotlib Figure with loss / OA / mAcc against epoch for each run (three panels, in that order).

    Args:
        runs: run label -> metrics records (``epoch``, ``lr``, ``{split}_loss``, ``{split}_oa``,
            ``{split}_macc`` for split in train / val / test; missing keys are skipped).
        title: figure title.

    Line style gives the split (train dashed, val dash-dot, test solid); with several runs colour gives
    the run, with one the split. The learning rate is a dotted line on the loss panel's right axis.
    The loss axis is logarithmic, with at least three labelled ticks however narrow its range (:func:`loss_ticks`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    if not runs:
        raise ValueError("runs must hold at least one run")
    several = len(runs) > 1
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 4.0))
    lr_axis = axes[0].twinx()
    splits_seen = set()
    for r, (label, records) in enumerate(runs.items()):
        records = sorted(records, key=lambda rec: rec["epoch"])
        epochs = [rec["epoch"] for rec in records]
        marker = "o" if len(records) <= 30 else None
        for ax, (key, _) in zip(axes, PANELS):
            for split in SPLITS:
                values = [rec.get(f"{split}_{key}") for rec in records]
                if all(v is None for v in values):
                    continue
                splits_seen.add(split)
                color = f"C{r % 10}" if several else _SPLIT_COLOR[split]
                ax.plot(epochs, values, _STYLE[split], color=color, marker=marker, markersize=3, linewidth=1.4)
        if any("lr" in rec for rec in records):
            lr_axis.plot(epochs, [rec.get("lr") for rec in records], ":", color=f"C{r % 10}" if several else "0.45",
                         linewidth=1.2)
    for ax, (_, name) in zip(axes, PANELS):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_yscale("log")  # early test losses of an untrained model are 100x the later ones
    axes[0].yaxis.set_major_locator(_loss_locator())
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.5, 1, 2, not 5x10^-1
    axes[0].yaxis.set_minor_formatter(NullFormatter())
    lr_axis.set_ylabel("learning rate (dotted)")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes[1:]:
        ax.set_ylim(bottom=0)
    order = [s for s in SPLITS if s in splits_seen]
    handles = [Line2D([], [], linestyle=_STYLE[s], color="0.2" if several else _SPLIT_COLOR[s], label=s) for s in order]
    handles.append(Line2D([], [], linestyle=":", color="0.45", label="lr"))
    if several:
        handles += [Line2D([], [], color=f"C{r % 10}", linewidth=3, label=str(label)) for r, label in enumerate(runs)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


# Mantissas of the log-axis ticks, from sparse to dense; the loss axis takes the densest that fits.
_LOG_MANTISSAS = ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0), tuple(float(m) for m in range(1, 10)))


def loss_ticks(vmin: float, vmax: float, min_ticks: int = 3, max_ticks: int = 8) -> List[float]:
    """Major tick positions for a logarithmic loss axis showing ``[vmin, vmax]`` (both > 0).

    The densest of 1 / 1-3 / 1-2-5 / 1-1.5-2-3-5-7 / 1..9 per decade giving at most ``max_ticks`` ticks in the range,
    if it gives at least ``min_ticks``; otherwise (a narrow range such as 1.0-1.2, where the loss
    hardly moves) evenly spaced round values (steps of 1, 2, 2.5 or 5 times a power of ten), as a
    linear axis would have. Every tick lies in the range.
    """
    import math

    from matplotlib.ticker import MaxNLocator

    if not 0 < vmin < vmax or not math.isfinite(vmax):
        return []
    best: List[float] = []
    for mantissas in _LOG_MANTISSAS:
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(vmin)), math.ceil(math.log10(vmax)) + 1)
                 for m in mantissas]
        ticks = [t for t in ticks if vmin <= t <= vmax]
        if len(ticks) > max_ticks:
            if not best:  # even one tick per decade is too many: every k-th decade
                best = ticks[::math.ceil(len(ticks) / max_ticks)]
            break
        best = ticks
    if len(best) >= min_ticks:
        return best
    linear = MaxNLocator(nbins=max(min_ticks, 5), steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
    return [float(t) for t in linear if vmin <= t <= vmax and t > 0]


def _loss_locator():
    """A matplotlib Locator placing :func:`loss_ticks` on the axis it is set on (made here, as matplotlib is
    imported only when a figure is drawn)."""
    from matplotlib.ticker import Locator

    class LossLocator(Locator):
        def __call__(self):
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin, vmax):
            lo, hi = sorted((float(vmin), float(vmax)))
            return loss_ticks(lo, hi)

    return LossLocator()


def plot_runs(run_dirs: Sequence, path, labels: Optional[Sequence[str]] = None, title: str = "") -> Path:
    """Overlay the curves of several run folders (each with a metrics.jsonl) in one PNG; returns the path.

    ``labels`` default to the folder paths as given; ``.png`` is appended to a ``path`` without it (the
    returned path is the file written). Raises ValueError when the number of labels differs or ``path`` is a
    folder.
    """
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"labels must name each run: {len(run_dirs)} runs, {len(labels)} labels")
    names = [str(d) for d in run_dirs] if labels is None else list(labels)
    if len(set(names)) != len(names):
        raise ValueError(f"runs and labels must be distinct; got {names}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--output {path} is a folder; give a PNG file name, e.g. {path / 'runs.png'}")
    if path.suffix.lower() != ".png":  # savefig would append .png to a name without it: say what is written
        path = path.with_name(path.name + ".png")
    return plot_curves({n: read_metrics(d) for n, d in zip(names, run_dirs)}, path, title)
