"""Rebuild data/modelnet10 from data/modelnet40_1024, byte for byte.

    python data/modelnet10/make_modelnet10.py            # writes next to this script
    python data/modelnet10/make_modelnet10.py --check    # rebuilds in a temporary folder, compares with SHA256SUMS

What it does (see SOURCE.md): keep the shapes of the ten ModelNet10 classes, all of them, in the official split;
keep the first 512 of each shape's 1024 points (the upstream point order is random, so this is a random
subset); relabel 0..9 in alphabetical class order; keep float16, the z-up frame and the (label, name) order.
No point is moved, added or reordered.
"""
import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

CLASSES = ("bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet")
POINTS = 512
HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "modelnet40_1024"
FILES = ("modelnet10_train.h5", "modelnet10_test.h5", "shape_names.txt")


def build(out: Path, source: Path = SOURCE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    names40 = [s.strip() for s in (source / "shape_names.txt").read_text().splitlines() if s.strip()]
    old_to_new = np.full(len(names40), -1, np.int64)
    for new, name in enumerate(CLASSES):
        old_to_new[names40.index(name)] = new
    for split in ("train", "test"):
        with h5py.File(source / f"modelnet40_1024_{split}.h5", "r") as f:
            label40 = f["label"][:]
            keep = np.flatnonzero(old_to_new[label40] >= 0)
            data = f["data"][keep, :POINTS, :]
            names = f["name"][keep]
        labels = old_to_new[label40[keep]]
        order = np.lexsort((names, labels))  # (label, name), as the source; already in this order
        data, labels, names = data[order], labels[order], names[order]
        assert data.dtype == np.float16 and data.shape[1:] == (POINTS, 3)
        with h5py.File(out / f"modelnet10_{split}.h5", "w") as g:
            g.attrs["description"] = (f"ModelNet10 classes of modelnet40_1024, first {POINTS} points/shape, "
                                      f"official {split} split; see SOURCE.md")
            g.create_dataset("data", data=data, chunks=(64, POINTS, 3), compression="gzip", compression_opts=9,
                             shuffle=True, track_times=False)
            g.create_dataset("label", data=labels, compression="gzip", compression_opts=9, shuffle=True,
                             track_times=False)
            g.create_dataset("name", data=names, compression="gzip", compression_opts=9, shuffle=True,
                             track_times=False)
    (out / "shape_names.txt").write_text("".join(f"{c}\n" for c in CLASSES))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sums(folder: Path) -> None:
    (folder / "SHA256SUMS").write_text("".join(f"{sha256(folder / n)}  {n}\n" for n in FILES))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare with SHA256SUMS")
    args = p.parse_args()
    if not args.check:
        build(HERE)
        write_sums(HERE)
        print(f"wrote {', '.join(FILES)} and SHA256SUMS in {HERE}")
        return 0
    expected = dict(reversed(line.split()) for line in (HERE / "SHA256SUMS").read_text().splitlines() if line)
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        bad = [n for n in FILES if sha256(Path(tmp) / n) != expected.get(n)]
    print("rebuild differs: " + ", ".join(bad) if bad else "rebuild identical to SHA256SUMS")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
