"""One configuration trained over several seeds: mean ± std of OA and mAcc, as the papers report.

``scripts/train_scanobjectnn.py --seeds 0 1 2 --output DIR`` writes run ``s`` to ``DIR/seed<s>/`` and
:func:`summarize_seed_runs` of their ``results.json`` to ``DIR/summary.json`` and ``DIR/summary.md``.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Dict, List, Sequence

__all__ = ["summarize_seed_runs", "seed_summary_markdown", "write_seed_summary"]


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize_seed_runs(runs: Sequence[dict]) -> dict:
    """Summarise finished runs of one configuration.

    Args:
        runs: one dict per seed with ``seed``, ``output`` and the keys of the run's ``results.json``
            (``test_oa``, ``test_macc`` in %, ``epoch``, ``protocol``).

    Returns:
        ``{"seeds", "protocol", "oa": {"mean", "std"}, "macc": {"mean", "std"}, "runs": [...]}``;
        std is the sample standard deviation over the seeds.

    Raises:
        ValueError: for no runs, a seed given twice, or runs reported under different protocols.
    """
    if not runs:
        raise ValueError("runs must hold at least one finished run; got none")
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"each seed must appear once; got seeds {seeds}")
    protocols = sorted({r["protocol"] for r in runs})
    if len(protocols) != 1:
        raise ValueError(f"runs must share one evaluation protocol; got {protocols}")
    rows: List[dict] = [{k: r[k] for k in ("seed", "output", "epoch", "test_oa", "test_macc")} for r in runs]
    return {"seeds": seeds, "protocol": protocols[0], "oa": _mean_std([r["test_oa"] for r in runs]),
            "macc": _mean_std([r["test_macc"] for r in runs]), "runs": rows}


def seed_summary_markdown(summary: dict, title: str = "") -> str:
    """A markdown table (one row per seed) and the mean ± std line."""
    out = [f"### {title}", ""] if title else []
    out += ["| seed | epoch | OA (%) | mAcc (%) | run |", "| --- | --- | --- | --- | --- |"]
    out += [f"| {r['seed']} | {r['epoch']} | {r['test_oa']:.2f} | {r['test_macc']:.2f} | `{r['output']}` |"
            for r in summary["runs"]]
    oa, macc = summary["oa"], summary["macc"]
    out += ["", f"OA {oa['mean']:.2f} ± {oa['std']:.2f} %, mAcc {macc['mean']:.2f} ± {macc['std']:.2f} % "
                f"(mean ± sample std over {len(summary['runs'])} seeds; {summary['protocol']})", ""]
    return "\n".join(out)


def write_seed_summary(summary: dict, output_dir, title: str = "") -> Path:
    """Write ``summary.json`` and ``summary.md`` into ``output_dir``; returns the JSON path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "summary.json"
    path.write_text(json.dumps({"title": title, **summary}, indent=1) + "\n")
    (output_dir / "summary.md").write_text(seed_summary_markdown(summary, title))
    return path
