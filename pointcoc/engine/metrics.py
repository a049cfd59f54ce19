"""Classification metrics from a confusion matrix: OA, mAcc, per-class accuracy; the matrix as a picture."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .._atomic import save_png

__all__ = ["confusion_matrix", "summarize_confusion", "per_class_table", "format_per_class_table",
           "confusion_figure", "plot_confusion_matrix", "ABSENT_CLASS_TEXT"]


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``cm[t, p]`` of samples with true class t predicted as p.

    Args:
        preds, labels: (n,) integer tensors with values in [0, num_classes).
    Returns:
        (num_classes, num_classes) int64 tensor on the inputs' device.
    """
    if preds.shape != labels.shape or preds.dim() != 1:
        raise ValueError(f"preds and labels must both have shape (n,); got {tuple(preds.shape)} and {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    if preds.numel() and (int(preds.min()) < 0 or int(preds.max()) >= num_classes):
        raise ValueError(f"preds must lie in [0, {num_classes}); got values in [{int(preds.min())}, {int(preds.max())}]")
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def summarize_confusion(cm: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> Dict:
    """OA (%), mAcc (% mean recall over classes that occur) and per-class accuracy (None where a class is absent).

    Returns a JSON-ready dict: ``oa``, ``macc``, ``count``, ``per_class_acc`` (list), ``class_names``,
    ``confusion_matrix`` (nested lists).
    """
    cm = cm.detach().cpu().long()
    support = cm.sum(1)
    total = int(support.sum())
    correct = int(cm.diag().sum())
    present = support > 0
    recall = cm.diag().double() / support.clamp(min=1).double()
    per_class: List[Optional[float]] = [100.0 * float(r) if p else None for r, p in zip(recall, present)]
    return {
        "oa": 100.0 * correct / total if total else float("nan"),
        "macc": 100.0 * float(recall[present].mean()) if bool(present.any()) else float("nan"),
        "count": total,
        "per_class_acc": per_class,
        "class_names": list(class_names) if class_names is not None else None,
        "confusion_matrix": cm.tolist(),
    }


def per_class_table(summary: Dict) -> List[Dict]:
    """Rows ``{"class", "count", "accuracy"}`` (accuracy in %, None for a class without samples) of a
    :func:`summarize_confusion` result; classes are named by ``class_names`` or by their index."""
    cm = summary["confusion_matrix"]
    names = summary.get("class_names") or [str(i) for i in range(len(cm))]
    return [{"class": name, "count": int(sum(row)), "accuracy": acc}
            for name, row, acc in zip(names, cm, summary["per_class_acc"])]


def format_per_class_table(rows: Sequence[Dict]) -> str:
    """The rows of :func:`per_class_table` as an aligned text table (header, one line per class)."""
    width = max([5] + [len(str(r["class"])) for r in rows])
    lines = [f"{'class':<{width}}  {'count':>5}  {'accuracy':>8}"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1f}%"
        lines.append(f"{r['class']:<{width}}  {r['count']:>5}  {acc:>8}")
    return "\n".join(lines)


# Counts are written in the cells up to this many classes (ModelNet40's 40); above, the cells get too small.
MAX_CLASSES_WITH_COUNTS = 40
COLORBAR_LABEL = "fraction of true class (row-normalised)"
# Written across the (hatched) row of a class the evaluated split holds no sample of.
ABSENT_CLASS_TEXT = "no samples of this class in this split"


def confusion_figure(cm: torch.Tensor, class_names: Optional[Sequence[str]] = None, title: str = ""):
    """A matplotlib Figure of the row-normalised confusion matrix ``cm`` (rows = true class, columns = predicted).

    The cell colour is the fraction of the true class predicted as that column (colour bar labelled
    :data:`COLORBAR_LABEL`). With at most :data:`MAX_CLASSES_WITH_COUNTS` classes each non-zero cell also shows
    its count, white on dark cells and black on light ones; zero cells stay blank, so the errors stand out.
    The row of a class without samples (a test split that lacks it) is hatched and says
    :data:`ABSENT_CLASS_TEXT`, so that it does not read as a class never predicted right.
    A long ``title`` (run names with paths) is wrapped to the figure's width and placed by the figure's
    layout, so it is never cut off.
    """
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = cm.detach().cpu().long()
    if counts.dim() != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"cm must be a square (num_classes, num_classes) matrix; got shape {tuple(counts.shape)}")
    n = counts.shape[0]
    norm = (counts.double() / counts.sum(1, keepdim=True).clamp(min=1)).numpy()
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    with_counts = n <= MAX_CLASSES_WITH_COUNTS
    size = max(5.0, (0.32 if with_counts else 0.28) * n + 2.5)
    fig = Figure(figsize=(size, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(COLORBAR_LABEL)
    _mark_absent_rows(ax, counts)
    if with_counts:
        for t in range(n):
            for p in range(n):
                text = str(int(counts[t, p]))
                if text == "0":
                    continue
                r, g, b, _ = im.cmap(im.norm(norm[t, p]))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # luma of the cell's colour
                ax.text(p, t, text, ha="center", va="center", color="white" if dark else "black",
                        fontsize=min(8.0, 13.0 / (0.6 * len(text))))  # a cell is about 23 pt wide
    if title:
        chars = max(20, int(size * 72 / (9 * 0.6)))  # about 0.6 em per character at 9 pt
        fig.suptitle(textwrap.fill(title, chars), fontsize=9)
    return fig


def _mark_absent_rows(ax, counts: torch.Tensor) -> None:
    """Hatch each row of ``counts`` (n, n) that holds no sample and write :data:`ABSENT_CLASS_TEXT` across it."""
    from matplotlib.patches import Rectangle

    n = counts.shape[0]
    for t in torch.nonzero(counts.sum(1) == 0).flatten().tolist():
        ax.add_patch(Rectangle((-0.5, t - 0.5), n, 1, facecolor="none", edgecolor="0.6", hatch="////", linewidth=0))
        ax.text((n - 1) / 2, t, ABSENT_CLASS_TEXT, ha="center", va="center", fontsize=7, color="0.25",
                bbox=dict(facecolor="white", edgecolor="none", pad=1.0))


def plot_confusion_matrix(cm: torch.Tensor, path, class_names: Optional[Sequence[str]] = None, title: str = "") -> Path:
    """Write :func:`confusion_figure` of ``cm`` as a PNG at ``path``; returns the path."""
    return save_png(confusion_figure(cm, class_names, title), Path(path), dpi=110)
