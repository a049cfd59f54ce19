"""Point-cloud classification data sets stored as HDF5 files with ``data`` / ``label`` datasets.

* ScanObjectNN (Uy et al., ICCV 2019), the authors' ``h5_files`` layout; variants by name
  (``PB_T50_RS`` default, ``OBJ_BG``, ``OBJ_ONLY``, ``PB_T25``, ``PB_T25_R``, ``PB_T50_R``).
* ModelNet40 in either of two layouts: ``modelnet40_1024`` (``modelnet40_1024_{train,test}.h5`` +
  ``shape_names.txt``; 1,024 float16 points per shape, z up; in a checkout's ``data/`` but not in the wheel) or
  PointNet's ``modelnet40_ply_hdf5_2048`` (``ply_data_train*.h5``, ``ply_data_test*.h5``, ``shape_names.txt``;
  2,048 points, y up), whichever is found first (:func:`find_modelnet40`).
* ``modelnet10``: the ten ModelNet10 classes of ``modelnet40_1024`` with their official split and 512 points per
  shape, shipped inside the package (the checkout's ``data/modelnet10``, see its SOURCE.md).

Default folders: :mod:`pointcoc.data.locations`. Each dataset returned by a loader records where its clouds came
from in ``.source`` (the folder, its layout, points per cloud in the files).

Samples are dicts ``{"xyz": (num_points, 3) float32, "label": () long}``; ``collate_point_dicts``
stacks them into the batch dicts the engine consumes.
"""
from __future__ import annotations

import glob
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .._links import repository_link
from ..ops.validation import coordinate_bound
from .locations import data_root_candidates, download_candidates, shipped_set_dir

__all__ = [
    "DatasetNotFoundError",
    "DataFormatError",
    "SCANOBJECTNN_VARIANTS",
    "SCANOBJECTNN_CLASSES",
    "PointCloudDataset",
    "read_h5_split",
    "find_scanobjectnn_files",
    "load_scanobjectnn",
    "find_modelnet40",
    "load_modelnet40",
    "load_modelnet10",
    "MODELNET10_CLASSES",
    "DEFAULT_NUM_POINTS",
    "default_num_points",
    "build_point_datasets",
    "DATA_SUBFOLDERS",
    "POINT_DATASETS",
]

# variant name -> (folder inside h5_files, file stem after "training_" / "test_")
SCANOBJECTNN_VARIANTS: Dict[str, Tuple[str, str]] = {
    "PB_T50_RS": ("main_split", "objectdataset_augmentedrot_scale75"),
    "PB_T50_R": ("main_split", "objectdataset_augmentedrot"),
    "PB_T25_R": ("main_split", "objectdataset_augmented25rot"),
    "PB_T25": ("main_split", "objectdataset_augmented25_norot"),
    "OBJ_BG": ("main_split", "objectdataset"),
    "OBJ_ONLY": ("main_split_nobg", "objectdataset"),
}

SCANOBJECTNN_CLASSES = [
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
    "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet",
]

MODELNET10_CLASSES = ["bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table",
                      "toilet"]

# Where each set's files live relative to a data folder ($POINTCOC_DATA, ./data, the checkout's data/;
# pointcoc.data.locations). ModelNet40 has two accepted layouts, each in its own folder (_MODELNET40_LAYOUTS).
# modelnet10 ships inside the package instead (shipped_set_dir).
DATA_SUBFOLDERS = {
    "scanobjectnn": "ScanObjectNN/h5_files",
    "modelnet40": "modelnet40_ply_hdf5_2048",
    "modelnet40_1024": "modelnet40_1024",
}
POINT_DATASETS = ("scanobjectnn", "modelnet40", "modelnet10")
# --num-points when not given: all points of the shipped modelnet10, 1024 (the published recipes) otherwise
DEFAULT_NUM_POINTS = {"scanobjectnn": 1024, "modelnet40": 1024, "modelnet10": 512}

_SCANOBJECTNN_HOWTO = (
    "ScanObjectNN is distributed by its authors after accepting their terms of use: fill in the form linked "
    "from https://hkust-vgd.github.io/scanobjectnn/ , download h5_files.zip and unzip it so that "
    "data/ScanObjectNN/h5_files/main_split/ exists below the working folder, or set POINTCOC_DATA to a folder "
    "holding ScanObjectNN/h5_files, or pass --data-root (data_root=) pointing at the h5_files folder. "
    f"See {repository_link('data/README.md')}"
)
_MODELNET_HOWTO = (
    "ModelNet40 (Princeton ModelNet, Wu et al. 2015; academic use) is not in the installed package. Either copy "
    f"the repository's folder modelnet40_1024/ ({repository_link('data/modelnet40_1024/')}: modelnet40_1024_train.h5, "
    "modelnet40_1024_test.h5, shape_names.txt; 1,024 points, z up) to $POINTCOC_DATA/modelnet40_1024/ (or to "
    "./data/modelnet40_1024/ below the working folder), or unzip PointNet's archive modelnet40_ply_hdf5_2048.zip "
    "(2,048 points, y up) so that $POINTCOC_DATA/modelnet40_ply_hdf5_2048/ply_data_train0.h5 (or "
    "./data/modelnet40_ply_hdf5_2048/ply_data_train0.h5) exists, or pass --data-root (data_root=) pointing at "
    f"either folder. See {repository_link('data/README.md')}"
)


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing; the message names every path searched and how to obtain the data."""


class DataFormatError(ValueError):
    """A data file exists but does not hold what it should (datasets, shapes, dtypes, label range)."""


def read_h5_split(path, num_classes: int, min_points: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Read ``data`` (n, P, 3) float and ``label`` (n,) or (n, 1) int from one h5 file.

    Returns:
        points: float32 array (n, P, 3); labels: int64 array (n,) with values in [0, num_classes).
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not an HDF5 file, a dataset is missing, a shape or dtype is wrong, labels out of range,
            non-finite coordinates, or fewer than ``min_points`` points per cloud.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"h5 file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataFormatError(f"{path} is not a readable HDF5 file ({err})") from None
    with f:
        missing = [k for k in ("data", "label") if k not in f]
        if missing:
            raise DataFormatError(f"{path} must hold datasets 'data' (n, P, 3) and 'label' (n,); "
                             f"missing {missing}, found {sorted(f.keys())}")
        data, label = f["data"], f["label"]
        groups = [k for k, v in (("data", data), ("label", label)) if not isinstance(v, h5py.Dataset)]
        if groups:
            raise DataFormatError(f"{path}: {' and '.join(repr(k) for k in groups)} must be HDF5 datasets (arrays); "
                                  f"got a {type(f[groups[0]]).__name__} (a group holds named members, not data)")
        if data.ndim != 3 or data.shape[2] != 3:
            raise DataFormatError(f"{path}: dataset 'data' must have shape (n, P, 3); got {data.shape}")
        if label.ndim == 2 and label.shape[1] == 1:
            label_shape = label.shape[:1]
        elif label.ndim == 1:
            label_shape = label.shape
        else:
            raise DataFormatError(f"{path}: dataset 'label' must have shape (n,) or (n, 1); got {label.shape}")
        if label_shape[0] != data.shape[0]:
            raise DataFormatError(f"{path}: 'data' holds {data.shape[0]} clouds but 'label' holds {label_shape[0]} labels")
        if data.shape[0] == 0:
            raise DataFormatError(f"{path}: the file holds no clouds (data shape {data.shape})")
        if data.shape[1] < min_points:
            raise DataFormatError(f"{path}: clouds must hold at least {min_points} points (--num-points); "
                             f"got {data.shape[1]}")
        if not np.issubdtype(data.dtype, np.floating):
            raise DataFormatError(f"{path}: dataset 'data' must be floating point; got dtype {data.dtype}")
        if not np.issubdtype(label.dtype, np.integer):
            raise DataFormatError(f"{path}: dataset 'label' must be integer; got dtype {label.dtype}")
        try:
            points = np.asarray(data[:], dtype=np.float32)
            labels = np.asarray(label[:]).reshape(-1).astype(np.int64)
        except OSError as err:  # h5py reports a damaged (e.g. compressed) chunk only when it is read
            raise DataFormatError(f"{path} is damaged: reading its data failed ({err}); download or copy the "
                                  "file again") from None
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataFormatError(f"{path}: labels must lie in 0..{num_classes - 1}; found {np.unique(labels[bad]).tolist()}")
    if not np.isfinite(points).all():
        raise DataFormatError(f"{path}: dataset 'data' contains NaN or inf")
    biggest = float(np.abs(points).max())
    limit = coordinate_bound(torch.float32, points.shape[2]) / 2  # room for the training scale (up to 1.5)
    if biggest > limit:
        raise DataFormatError(f"{path}: dataset 'data' holds coordinates up to {biggest:.3g} in magnitude; float32 "
                              f"squared distances overflow above about {2 * limit:.3g}: rescale the clouds")
    collapsed = int((points == points[:, :1]).all(axis=(1, 2)).sum())
    if collapsed:
        warnings.warn(f"{path}: {collapsed} of {len(points)} clouds have every point at one position (broken "
                      "scans?); they train with finite gradients but carry no shape", stacklevel=2)
    return points, labels


class PointCloudDataset(Dataset):
    """In-memory point-cloud classification set.

    Args:
        points: float array (n, P, 3) of all clouds.
        labels: int array (n,).
        num_points: the first ``num_points`` of the P points are used (as the authors do).
        transform: called on each (num_points, 3) tensor, e.g. ``PointCloudAugment()``; None = no augmentation.
        class_names: optional list of names, one per class.
    Items: ``{"xyz": (num_points, 3) float32 tensor, "label": () long tensor}``.
    """

    def __init__(self, points: np.ndarray, labels: np.ndarray, num_points: int,
                 transform: Optional[Callable] = None, class_names: Optional[Sequence[str]] = None):
        points = np.asarray(points)
        labels = np.asarray(labels)
        if points.ndim != 3 or points.shape[2] not in (2, 3):
            raise ValueError(f"points must have shape (n, P, D) with D in {{2, 3}}; got {points.shape}")
        if labels.shape != (points.shape[0],):
            raise ValueError(f"labels must have shape ({points.shape[0]},); got {labels.shape}")
        if not isinstance(num_points, int) or not 1 <= num_points <= points.shape[1]:
            raise ValueError(f"num_points must be an int in [1, {points.shape[1]}] (points per cloud in the file); "
                             f"got {num_points!r}")
        self.points = torch.from_numpy(np.ascontiguousarray(points[:, :num_points], dtype=np.float32))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.num_points = num_points
        self.transform = transform
        self.class_names = list(class_names) if class_names is not None else None
        self.source: Optional[str] = None  # where the clouds came from, set by the loaders (a one-line description)

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, i: int) -> dict:
        xyz = self.points[i]
        if self.transform is not None:
            xyz = self.transform(xyz)
        return {"xyz": xyz, "label": self.labels[i]}


def _search_roots(root) -> List[Path]:
    """The folder given (the authors' ``h5_files``) and ``root/h5_files`` (the folder h5_files.zip was unzipped in);
    ``root`` None: the default folders ($POINTCOC_DATA/ScanObjectNN/h5_files, then ./data/ScanObjectNN/h5_files)."""
    if root is None:
        return [p.absolute() for p in download_candidates(DATA_SUBFOLDERS["scanobjectnn"])]
    root = Path(root).absolute()
    return [root] if root.name == "h5_files" else [root, root / "h5_files"]


def find_scanobjectnn_files(root=None, variant: str = "PB_T50_RS") -> Tuple[Path, Path]:
    """Locate the (training, test) h5 files of a ScanObjectNN variant under ``root``.

    ``root`` may be the authors' ``h5_files`` folder or its parent; None searches the default folders
    (:mod:`pointcoc.data.locations`). Raises ``DatasetNotFoundError`` naming every path searched.
    """
    key = str(variant).upper().replace("-", "_")
    if key not in SCANOBJECTNN_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(SCANOBJECTNN_VARIANTS)}; got {variant!r}")
    folder, stem = SCANOBJECTNN_VARIANTS[key]
    searched = []
    for base in _search_roots(root):
        train = base / folder / f"training_{stem}.h5"
        test = base / folder / f"test_{stem}.h5"
        searched += [train, test]
        if train.is_file() and test.is_file():
            return train, test
    lines = "\n".join(f"  {p}" for p in searched)
    raise DatasetNotFoundError(
        f"ScanObjectNN {key} not found. Looked for:\n{lines}\n{_SCANOBJECTNN_HOWTO}")


def load_scanobjectnn(root=None, variant: str = "PB_T50_RS", num_points: int = 1024, augment: Optional[Callable] = None):
    """(train, test, class_names) for ScanObjectNN; ``augment`` is applied to training clouds only."""
    train_path, test_path = find_scanobjectnn_files(root, variant)
    n = len(SCANOBJECTNN_CLASSES)
    train = PointCloudDataset(*read_h5_split(train_path, n, num_points), num_points, augment, SCANOBJECTNN_CLASSES)
    test = PointCloudDataset(*read_h5_split(test_path, n, num_points), num_points, None, SCANOBJECTNN_CLASSES)
    train.source = test.source = f"ScanObjectNN {variant} from {train_path.parent}"
    return train, test, list(SCANOBJECTNN_CLASSES)


def _read_names(path: Path, expected: int) -> List[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != expected:
        raise DataFormatError(f"{path} must list {expected} class names, one per line; got {len(names)}")
    return names


def _read_concat(paths: Sequence[Path], num_classes: int, num_points: int):
    parts = [read_h5_split(p, num_classes, num_points) for p in paths]
    shapes = {p[0].shape[1] for p in parts}
    if len(shapes) != 1:
        raise DataFormatError(f"files {list(map(str, paths))} hold clouds of different sizes {sorted(shapes)}")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _modelnet40_candidates(root) -> List[Path]:
    """Folders that may hold ModelNet40 in one of the two layouts, in search order. ``root`` given: the folder
    itself, then its ``modelnet40_1024`` and ``modelnet40_ply_hdf5_2048`` subfolders; None: those two subfolders
    of each default data folder (:func:`pointcoc.data.locations.data_root_candidates`)."""
    subfolders = [DATA_SUBFOLDERS["modelnet40"], DATA_SUBFOLDERS["modelnet40_1024"]]
    if root is not None:
        root = Path(root).absolute()
        return [root] + [root / sub for sub in subfolders]
    return [base / sub for base in data_root_candidates() for sub in subfolders]


def find_modelnet40(root=None) -> Tuple[str, Path, List[Path], List[Path]]:
    """Locate ModelNet40: (layout, folder, training files, test files), layout ``"ply_hdf5_2048"`` or
    ``"modelnet40_1024"``.

    Under each candidate folder (:func:`_modelnet40_candidates`; a folder holding both layouts: PointNet's first)
    a layout counts when all its files exist: ``ply_data_train*.h5``, ``ply_data_test*.h5`` and
    ``shape_names.txt``, or ``modelnet40_1024_train.h5``, ``modelnet40_1024_test.h5`` and ``shape_names.txt``.
    Raises ``DatasetNotFoundError`` naming every path tried and where to put the files.
    """
    searched: List[Path] = []
    for base in _modelnet40_candidates(root):
        names = base / "shape_names.txt"
        train = sorted(glob.glob(str(base / "ply_data_train*.h5")))
        test = sorted(glob.glob(str(base / "ply_data_test*.h5")))
        searched += [base / "ply_data_train*.h5", base / "ply_data_test*.h5"]
        if train and test and names.is_file():
            return "ply_hdf5_2048", base, [Path(p) for p in train], [Path(p) for p in test]
        train1024, test1024 = base / "modelnet40_1024_train.h5", base / "modelnet40_1024_test.h5"
        searched += [train1024, test1024, names]
        if train1024.is_file() and test1024.is_file() and names.is_file():
            return "modelnet40_1024", base, [train1024], [test1024]
    lines = "\n".join(f"  {p}" for p in searched)
    raise DatasetNotFoundError(f"ModelNet40 not found. Looked for:\n{lines}\n{_MODELNET_HOWTO}")


def _points_in_file(path: Path) -> int:
    """Points per cloud of an h5 file's ``data`` (n, P, 3), or 0 when it cannot be read (read_h5_split reports why)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            data = f.get("data")
            return int(data.shape[1]) if isinstance(data, h5py.Dataset) and data.ndim == 3 else 0
    except OSError:
        return 0


def _check_num_points(what: str, paths: Sequence[Path], num_points: int) -> None:
    """A clear error when ``num_points`` exceeds the points per cloud the files of ``what`` hold."""
    held = [_points_in_file(p) for p in paths]
    known = [h for h in held if h > 0]
    if known and isinstance(num_points, int) and num_points > min(known):
        raise DataFormatError(f"{what} holds {min(known)} points per cloud ({paths[held.index(min(known))]}); "
                              f"--num-points (num_points) {num_points} asks for more: use at most {min(known)}")


def load_modelnet40(root=None, num_points: int = 1024, augment: Optional[Callable] = None):
    """(train, test, class_names) of ModelNet40 (40 classes, official split) from the first folder
    :func:`find_modelnet40` finds under ``root`` (None: the default folders, :mod:`pointcoc.data.locations`):
    the ``modelnet40_1024`` layout (9,843 / 2,468 shapes, 1,024 points, float16 read as float32, z up) or PointNet's
    ``modelnet40_ply_hdf5_2048`` (2,048 points, y up). ``train.source`` / ``test.source`` say which folder and
    layout were used."""
    layout, base, train_paths, test_paths = find_modelnet40(root)
    _check_num_points(f"ModelNet40 ({layout} layout in {base})", train_paths + test_paths, num_points)
    names = _read_names(base / "shape_names.txt", 40)
    train = PointCloudDataset(*_read_concat(train_paths, 40, num_points), num_points, augment, names)
    test = PointCloudDataset(*_read_concat(test_paths, 40, num_points), num_points, None, names)
    frame = "z up" if layout == "modelnet40_1024" else "y up"
    source = f"ModelNet40 from {base} ({layout} layout, {train.points.shape[0]} / {test.points.shape[0]} shapes, {frame})"
    train.source = test.source = source
    return train, test, names


def load_modelnet10(root=None, num_points: int = 512, augment: Optional[Callable] = None):
    """(train, test, class_names) of the shipped ``modelnet10``: the ten ModelNet10 classes of ModelNet40, official
    split (3,991 train / 908 test shapes), 512 points per shape (float16 read as float32), z up. ``root`` None: the
    copy inside the package (a checkout's ``data/modelnet10``). ``num_points`` may be at most 512."""
    base = Path(root).absolute() if root is not None else shipped_set_dir("modelnet10")
    files = [base / "modelnet10_train.h5", base / "modelnet10_test.h5", base / "shape_names.txt"]
    missing = [p for p in files if not p.is_file()]
    if missing:
        lines = "\n".join(f"  {p}" for p in files)
        raise DatasetNotFoundError(
            f"modelnet10 not found. Looked for:\n{lines}\nIt ships inside the pointcoc package (and in the "
            f"repository, {repository_link('data/modelnet10/')}): reinstall pointcoc, or pass "
            f"--data-root (root=) to point at a folder holding these files.")
    _check_num_points(f"modelnet10 ({base})", files[:2], num_points)
    names = _read_names(files[2], len(MODELNET10_CLASSES))
    n = len(names)
    train = PointCloudDataset(*read_h5_split(files[0], n, num_points), num_points, augment, names)
    test = PointCloudDataset(*read_h5_split(files[1], n, num_points), num_points, None, names)
    train.source = test.source = f"modelnet10 from {base} ({len(train)} / {len(test)} shapes, z up)"
    return train, test, names


def default_num_points(name: str) -> int:
    """``--num-points`` when not given for data set ``name``: 512 for modelnet10 (all it holds), else 1024."""
    return DEFAULT_NUM_POINTS.get(name, 1024)


def build_point_datasets(name: str, root=None, variant: str = "PB_T50_RS", num_points: Optional[int] = None,
                         augment: Optional[Callable] = None):
    """Dispatch by data-set name (one of ``POINT_DATASETS``); ``root`` None = the default folders; ``num_points``
    None = :func:`default_num_points`.

    Returns (train_dataset, test_dataset, class_names); each dataset's ``.source`` says where it was read from.
    """
    if name not in POINT_DATASETS:
        raise ValueError(f"dataset must be one of {list(POINT_DATASETS)}; got {name!r}")
    if num_points is None:
        num_points = default_num_points(name)
    if name == "scanobjectnn":
        return load_scanobjectnn(root, variant, num_points, augment)
    if name == "modelnet40":
        return load_modelnet40(root, num_points, augment)
    return load_modelnet10(root, num_points, augment)
