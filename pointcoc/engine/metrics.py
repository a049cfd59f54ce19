"""Classification metrics from a confusion matrix: OA, mAcc, per-class accuracy; PNG plot."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

__all__ = ["confusion_matrix", "summarize_confusion", "per_class_table", "format_per_class_table",
           "plot_confusion_matrix"]


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


def plot_confusion_matrix(cm: torch.Tensor, path, class_names: Optional[Sequence[str]] = None, title: str = "") -> Path:
    """Write the row-normalised confusion matrix (rows = true class) as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = cm.detach().cpu().double()
    norm = cm / cm.sum(1, keepdim=True).clamp(min=1)
    n = cm.shape[0]
    size = max(5.0, 0.28 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
