#!/usr/bin/env python
"""Re-run the README's training commands and write their numbers where the README and docs state them.

    python scripts/measure_readme.py                 # every measurement (about 6 minutes on an idle 2-core CPU)
    python scripts/measure_readme.py --only demo     # one of them
    python scripts/measure_readme.py --check         # only check that the pages show what docs/measured.json holds

Each measurement runs its command (the README's own, into a temporary folder), then records in
``docs/measured.json``: the test OA and mAcc of the final epoch, the number of test samples, the accuracy of
always answering the largest test class (the baseline a small test set must be compared with), the wall time,
the date and the machine. The pages quote a measurement between ``<!-- measured:NAME -->`` and
``<!-- /measured -->`` markers; this script rewrites those spans from the JSON file, and
``tests/test_measured_numbers.py`` fails when a page's span differs from it, so a stale number shows as a diff.
Exit code 0, or 1 when a command fails or (``--check``) a page is out of date.
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "docs" / "measured.json"
PAGES = [ROOT / "README.md", ROOT / "docs" / "training.md", ROOT / "docs" / "pixels.md"]
SPAN = re.compile(r"<!-- measured:(?P<name>[a-z0-9_]+) -->(?P<text>.*?)<!-- /measured -->", re.S)

# name -> (the README's command, what its test set is). {out} is the run folder.
MEASUREMENTS = {
    "demo": (["pointcoc", "train", "--config", "demo", "--output", "{out}"],
             "the 908 official test shapes of the ten ModelNet10 classes"),
    "digits_discrete": (["pointcoc", "train-pixels", "--dataset", "digits", "--format", "discrete", "--keep", "0.5",
                         "--output", "{out}"],
                        "359 test digits, half of the pixels of each"),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(name: str) -> dict:
    """Run measurement ``name`` in a temporary folder; returns its record."""
    argv, test_set = MEASUREMENTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [a.replace("{out}", str(out)) for a in argv]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pointcoc", *command[1:], "--progress", "line"], cwd=tmp)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}")
        results = json.loads((out / "results.json").read_text())
    per_class = [sum(row) for row in results["confusion_matrix"]]
    return {
        "command": " ".join(a for a in argv if a not in ("--output", "{out}")),
        "test_set": test_set,
        "epoch": results["epoch"],
        "oa": round(results["test_oa"], 2),
        "macc": round(results["test_macc"], 2),
        "test_samples": results["count"],
        "majority_oa": round(100.0 * max(per_class) / sum(per_class), 2),
        "wall_s": round(wall, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
    }


def render(record: dict) -> str:
    """The sentence a page shows for a measurement."""
    minutes, seconds = divmod(round(record["wall_s"]), 60)
    wall = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    return (f"**OA {record['oa']:.1f} % / mAcc {record['macc']:.1f} %** on {record['test_set']} (final epoch "
            f"{record['epoch']}; always answering the largest class: {record['majority_oa']:.1f} %), {wall} wall "
            f"for `{record['command']}` ({record['machine']}, {record['date']}; `python scripts/measure_readme.py`)")


def rewrite_pages(records: dict) -> list:
    """Put each measurement's sentence into its spans; returns the pages changed."""
    changed = []
    for page in PAGES:
        text = page.read_text()
        new = SPAN.sub(lambda m: f"<!-- measured:{m['name']} -->{render(records[m['name']])}<!-- /measured -->"
                       if m["name"] in records else m[0], text)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def stale_spans(records: dict) -> list:
    """(page, name) of every span that does not show its measurement (or names no measurement)."""
    return [(page, m["name"]) for page in PAGES for m in SPAN.finditer(page.read_text())
            if m["name"] not in records or m["text"] != render(records[m["name"]])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(MEASUREMENTS), help="these measurements only")
    parser.add_argument("--check", action="store_true", help="measure nothing; check the pages")
    args = parser.parse_args(argv)
    records = json.loads(MEASURED.read_text()) if MEASURED.is_file() else {}
    if not args.check:
        for name in args.only or sorted(MEASUREMENTS):
            print(f"measuring {name}: {' '.join(MEASUREMENTS[name][0])}", flush=True)
            records[name] = measure(name)
            print(render(records[name]), flush=True)
        MEASURED.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        for page in rewrite_pages(records):
            print(f"updated {page.relative_to(ROOT)}")
    stale = stale_spans(records)
    for page, name in stale:
        print(f"{page.relative_to(ROOT)}: the span of {name!r} does not show docs/measured.json", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
