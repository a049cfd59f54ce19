"""Reports: the rows as a markdown table, as JSON, and the training-step rows as a bar chart."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import List, Optional

from .measure import MIN_PAIRS, Row
from .model_rows import MODEL_LABELS, STEP_GROUPS

__all__ = ["to_markdown", "to_json", "plot_model_vs_reference", "QUICK_NOTE"]


def plot_model_vs_reference(rows: List[Row], path: str) -> None:
    """Bar chart of the "<Model> train step" rows: seconds per step, ours and the reference, per model and batch
    (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {group: MODEL_LABELS[name] for name, group in STEP_GROUPS.items()}
    rows = [r for r in rows if r.group in groups]
    if not rows:
        raise ValueError(f"rows must hold at least one row of {list(groups)}; got none")
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 3.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r.ref_s for r in rows], width=0.4, label="published layout (reference)")
    ax.bar([x + 0.2 for x in xs], [r.ours_s for r in rows], width=0.4, label="pointcoc")
    for x, r in zip(xs, rows):
        ax.text(x + 0.2, r.ours_s, f"{r.ref_s / r.ours_s:.2f}x faster", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [f"{groups[r.group]}\n{r.case.split(',')[0]}" for r in rows], fontsize=8)
    ax.set_ylim(0, 1.3 * max(max(r.ref_s, r.ours_s) for r in rows))  # room for the legend
    ax.set_ylabel("seconds per training step (median)")
    ax.set_title(f"training step, {rows[0].case.split(', ')[1]}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Above a --quick table: what its ratios are worth.
QUICK_NOTE = (f"--quick: small cases, each time the median of {MIN_PAIRS} timed pairs. On a shared or loaded machine "
              "such ratios move between runs (one pair once gave 8.3x, repeated 1.1x): they check the plumbing and "
              "the parity notes; quote a full run (without --quick) for speed.")


def to_markdown(rows: List[Row], skipped: Optional[dict] = None, quick: bool = False) -> str:
    """The rows as a markdown table (times in ms, memory in MiB, ratios ours / reference), then skipped sections;
    ``quick``: :data:`QUICK_NOTE` above the table."""
    def mib(b):
        return "" if b is None else f"{b / 2**20:.1f}"

    lines = [QUICK_NOTE, ""] if quick else []
    lines += [
        "| what | case | ours | reference | ours ms | ref ms | time ratio | ours MiB | ref MiB | memory ratio | note |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        mem_ratio = "" if r.mem_ratio is None else f"{r.mem_ratio:.3f}"
        lines.append(
            f"| {r.group} | {r.case} | {r.ours} | {r.reference} | {r.ours_s * 1e3:.1f} | {r.ref_s * 1e3:.1f} "
            f"| {r.time_ratio:.2f} | {mib(r.ours_mem)} | {mib(r.ref_mem)} | {mem_ratio} | {r.note} |"
        )
    for name, reason in (skipped or {}).items():
        lines.append(f"\nSkipped section {name}: {reason}")
    return "\n".join(lines)


def to_json(rows: List[Row], path: str, meta: Optional[dict] = None) -> None:
    """Write the rows (with their ratios) and ``meta`` to ``path`` as JSON."""
    records = [dict(asdict(r), time_ratio=r.time_ratio, mem_ratio=r.mem_ratio) for r in rows]
    with open(path, "w") as f:
        json.dump({"meta": meta or {}, "rows": records}, f, indent=2)

