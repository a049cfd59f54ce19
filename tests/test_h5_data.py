import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pointcoc.data import (DataFormatError, DatasetNotFoundError, PointCloudAugment, build_point_datasets,
                           find_modelnet40, load_modelnet10, load_modelnet40, load_scanobjectnn,
                           random_scale_translate, read_h5_split, shuffle_points)
from pointcoc.data import locations
from pointcoc.data.h5sets import MODELNET10_CLASSES, SCANOBJECTNN_VARIANTS, find_scanobjectnn_files

from point_h5_helpers import class_clouds, damage_chunk, write_h5, write_scanobjectnn

DATA = Path(__file__).resolve().parents[1] / "data"
MN10 = DATA / "modelnet10"
MN40 = DATA / "modelnet40_1024"
# the official ModelNet40 split counts of the ModelNet10 classes (data/modelnet40_1024/SOURCE.md)
MN10_COUNTS = {"bathtub": (106, 50), "bed": (515, 100), "chair": (889, 100), "desk": (200, 86),
               "dresser": (200, 86), "monitor": (465, 100), "night_stand": (200, 86), "sofa": (680, 100),
               "table": (392, 100), "toilet": (344, 100)}


def test_scanobjectnn_reads_authors_layout_and_truncates_points(tmp_path):
    (tr_x, tr_y), (te_x, te_y) = write_scanobjectnn(tmp_path / "h5_files", points=64)
    train, test, names = load_scanobjectnn(tmp_path / "h5_files", num_points=32)
    assert len(names) == 15 and len(train) == 30 and len(test) == 15
    item = test[3]
    assert item["xyz"].shape == (32, 3) and item["xyz"].dtype == torch.float32
    torch.testing.assert_close(item["xyz"], torch.from_numpy(te_x[3, :32]))  # first points, as the authors
    assert int(item["label"]) == te_y[3]
    assert torch.equal(train.labels, torch.from_numpy(tr_y))
    # the parent of h5_files is accepted as well
    assert len(load_scanobjectnn(tmp_path, num_points=32)[0]) == 30


@pytest.mark.parametrize("variant", ["OBJ_ONLY", "obj-bg", "PB_T25"])
def test_scanobjectnn_variants_by_name(tmp_path, variant):
    folder, stem = SCANOBJECTNN_VARIANTS[variant.upper().replace("-", "_")]
    write_scanobjectnn(tmp_path, folder=folder, stem=stem)
    train_path, _ = find_scanobjectnn_files(tmp_path, variant)
    assert train_path.parent.name == folder and train_path.name == f"training_{stem}.h5"
    assert len(load_scanobjectnn(tmp_path, variant, num_points=16)[1]) == 15


def test_missing_scanobjectnn_names_every_path_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_scanobjectnn(tmp_path / "nowhere")
    msg = str(e.value)
    for p in [tmp_path / "nowhere" / "main_split" / "training_objectdataset_augmentedrot_scale75.h5",
              tmp_path / "nowhere" / "h5_files" / "main_split" / "test_objectdataset_augmentedrot_scale75.h5"]:
        assert str(p) in msg
    assert "terms of use" in msg and "data/README.md" in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(ValueError, match="variant must be one of"):
        find_scanobjectnn_files(tmp_path, "PB_T99")


@pytest.mark.parametrize("case, match", [
    ("no_label", r"missing \['label'\]"),
    ("2d_points", r"'data' must have shape \(n, P, 3\)"),
    ("label_range", r"labels must lie in 0..14; found \[15\]"),
    ("negative_label", r"found \[-1\]"),
    ("count_mismatch", "holds 6 clouds but 'label' holds 5"),
    ("float_labels", "'label' must be integer"),
    ("not_h5", "not a readable HDF5 file"),
    ("nan", "NaN or inf"),
])
def test_bad_h5_files_get_clear_errors(tmp_path, case, match):
    x, y = class_clouds(6, 16, 15, 0)
    path = tmp_path / "f.h5"
    if case == "no_label":
        write_h5(path, x, None)
    elif case == "2d_points":
        write_h5(path, x[:, :, :2], y)
    elif case == "label_range":
        y[2] = 15
        write_h5(path, x, y)
    elif case == "negative_label":
        y[0] = -1
        write_h5(path, x, y)
    elif case == "count_mismatch":
        write_h5(path, x, y[:5])
    elif case == "float_labels":
        write_h5(path, x, y.astype(np.float32))
    elif case == "not_h5":
        path.write_bytes(b"this is not hdf5")
    elif case == "nan":
        x[1, 2, 0] = np.nan
        write_h5(path, x, y)
    with pytest.raises(DataFormatError, match=match):
        read_h5_split(path, 15)


def test_a_damaged_compressed_chunk_is_reported_when_read(tmp_path):
    x, y = class_clouds(16, 64, 15, 0)
    path = damage_chunk(tmp_path / "d.h5", x, y)
    with pytest.raises(DataFormatError, match=r"d.h5 is damaged: reading its data failed \(.*\); download or copy"):
        read_h5_split(path, 15, 64)
    good = write_h5(tmp_path / "g.h5", x, y)  # the same data undamaged reads back exactly
    assert np.array_equal(read_h5_split(good, 15, 64)[0], x)


def test_too_few_points_for_num_points(tmp_path):
    write_scanobjectnn(tmp_path, points=16)
    with pytest.raises(ValueError, match="at least 1024 points"):
        load_scanobjectnn(tmp_path)


def _sha256_ok(folder):
    for line in (folder / "SHA256SUMS").read_text().split("\n"):
        if line.strip():
            digest, name = line.split()
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def _write_modelnet40_1024(folder, n_train=6, n_test=3, points=1024):
    """A tiny file pair in the modelnet40_1024 layout (float16, 'name' dataset, as the real files)."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = class_clouds(n, points, 40, seed)
        x = (x / np.abs(x).max()).astype(np.float16)
        with h5py.File(folder / f"modelnet40_1024_{split}.h5", "w") as f:
            f.create_dataset("data", data=x)
            f.create_dataset("label", data=y)
            f.create_dataset("name", data=np.array([f"c{c}_{i:04d}".encode() for i, c in enumerate(y)]))
        out.append((x, y))
    (folder / "shape_names.txt").write_text("".join(f"c{i}\n" for i in range(40)))
    return out


def test_the_checkouts_modelnet40_is_found_without_flags(tmp_path, monkeypatch):
    """From any working folder, with no --data-root and no $POINTCOC_DATA: the checkout's data/modelnet40_1024."""
    import h5py

    monkeypatch.delenv(locations.DATA_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    layout, base, train, test = find_modelnet40()
    assert (layout, base, train, test) == ("modelnet40_1024", MN40, [MN40 / "modelnet40_1024_train.h5"],
                                           [MN40 / "modelnet40_1024_test.h5"])
    counts = []
    for path in train + test:
        with h5py.File(path, "r") as f:
            assert f["data"].shape[1:] == (1024, 3) and f["data"].dtype == np.float16
            labels = f["label"][:]
            counts.append(len(labels))
            assert set(labels.tolist()) == set(range(40))
    assert counts == [9843, 2468]
    names = (MN40 / "shape_names.txt").read_text().split()
    assert len(names) == 40 and names[0] == "airplane" and names[-1] == "xbox"


@pytest.mark.parametrize("where", ["data_root_folder", "data_root_parent", "env", "cwd_data"])
def test_the_modelnet40_1024_layout_is_found_under_every_root(tmp_path, monkeypatch, where):
    monkeypatch.delenv(locations.DATA_ENV_VAR, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    folder = {"data_root_folder": tmp_path / "x", "data_root_parent": tmp_path / "x" / "modelnet40_1024",
              "env": tmp_path / "env" / "modelnet40_1024", "cwd_data": work / "data" / "modelnet40_1024"}[where]
    (tr_x, tr_y), (te_x, te_y) = _write_modelnet40_1024(folder, points=64)
    root = tmp_path / "x" if where.startswith("data_root") else None
    if where == "env":
        monkeypatch.setenv(locations.DATA_ENV_VAR, str(tmp_path / "env"))
    train, test, names = load_modelnet40(root, num_points=32)
    assert (len(train), len(test), names[39]) == (6, 3, "c39")
    assert train.points.dtype == torch.float32  # float16 in the file
    torch.testing.assert_close(train.points, torch.from_numpy(tr_x[:, :32].astype(np.float32)))
    assert torch.equal(test.labels, torch.from_numpy(te_y))
    assert str(folder) in train.source and "modelnet40_1024 layout" in train.source


def test_modelnet40_layout_concatenates_files(tmp_path, monkeypatch):
    parts = [class_clouds(n, 32, 40, s) for n, s in ((5, 0), (7, 1), (4, 2))]
    write_h5(tmp_path / "ply_data_train0.h5", *parts[0])
    write_h5(tmp_path / "ply_data_train1.h5", *parts[1])
    write_h5(tmp_path / "ply_data_test0.h5", *parts[2])
    (tmp_path / "shape_names.txt").write_text("\n".join(f"c{i}" for i in range(40)) + "\n")
    train, test, names = load_modelnet40(tmp_path, num_points=32)
    assert len(train) == 12 and len(test) == 4 and names[39] == "c39"
    torch.testing.assert_close(train[6]["xyz"], torch.from_numpy(parts[1][0][1]))
    assert "ply_hdf5_2048 layout" in train.source and str(tmp_path) in train.source
    # under $POINTCOC_DATA/modelnet40_ply_hdf5_2048 it wins over the checkout's modelnet40_1024
    env = tmp_path / "env" / "modelnet40_ply_hdf5_2048"
    env.mkdir(parents=True)
    for f in tmp_path.glob("*.*"):
        (env / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv(locations.DATA_ENV_VAR, str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    layout, base, _, _ = find_modelnet40()
    assert (layout, base) == ("ply_hdf5_2048", env)
    with pytest.raises(DataFormatError, match="holds 32 points per cloud.*num_points\\) 64 asks for more"):
        load_modelnet40(tmp_path, num_points=64)


def test_a_bad_file_in_either_modelnet40_layout_gets_read_h5_splits_error(tmp_path):
    _write_modelnet40_1024(tmp_path / "a", points=16)
    x, y = class_clouds(3, 16, 40, 0)
    y[1] = 40
    write_h5(tmp_path / "a" / "modelnet40_1024_test.h5", x, y)
    with pytest.raises(DataFormatError, match=r"modelnet40_1024_test.h5: labels must lie in 0..39; found \[40\]"):
        load_modelnet40(tmp_path / "a", num_points=16)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "ply_data_train0.h5").write_bytes(b"not hdf5")
    write_h5(tmp_path / "b" / "ply_data_test0.h5", *class_clouds(3, 16, 40, 0))
    (tmp_path / "b" / "shape_names.txt").write_text("".join(f"c{i}\n" for i in range(40)))
    with pytest.raises(DataFormatError, match="not a readable HDF5 file"):
        load_modelnet40(tmp_path / "b", num_points=16)


def test_missing_modelnet40_names_every_path_tried_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv(locations.DATA_ENV_VAR, str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(locations, "checkout_data_dir", lambda: None)  # as in an installed wheel
    with pytest.raises(DatasetNotFoundError) as e:
        load_modelnet40()
    msg = str(e.value)
    for base in (tmp_path / "env", tmp_path / "data"):
        for p in (base / "modelnet40_ply_hdf5_2048" / "ply_data_train*.h5",
                  base / "modelnet40_ply_hdf5_2048" / "ply_data_test*.h5",
                  base / "modelnet40_1024" / "modelnet40_1024_train.h5",
                  base / "modelnet40_1024" / "modelnet40_1024_test.h5",
                  base / "modelnet40_1024" / "shape_names.txt"):
            assert f"  {p}\n" in msg, p
    assert "$POINTCOC_DATA/modelnet40_1024/" in msg and "modelnet40_ply_hdf5_2048.zip" in msg
    assert "data/README.md" in msg and isinstance(e.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError) as e:
        load_modelnet40(tmp_path / "given")
    msg = str(e.value)
    for p in (tmp_path / "given" / "ply_data_train*.h5", tmp_path / "given" / "modelnet40_1024_train.h5",
              tmp_path / "given" / "modelnet40_1024" / "modelnet40_1024_test.h5",
              tmp_path / "given" / "modelnet40_ply_hdf5_2048" / "ply_data_test*.h5"):
        assert f"  {p}\n" in msg, p
    assert str(tmp_path / "env") not in msg  # --data-root given: only there


def test_shipped_modelnet10_is_intact_and_loads():
    _sha256_ok(MN10)
    _sha256_ok(MN40)
    assert (MN10 / "SOURCE.md").is_file() and (MN10 / "make_modelnet10.py").is_file()
    assert locations.shipped_set_dir("modelnet10") == MN10
    train, test, names = build_point_datasets("modelnet10")  # 512 points by default
    assert (len(train), len(test), names) == (3991, 908, MODELNET10_CLASSES)
    assert train.points.shape == (3991, 512, 3) and train.points.dtype == torch.float32
    assert float(train.points.norm(dim=-1).max()) <= 1.0 + 1e-3  # unit sphere, float16 rounding
    for ds, split in ((train, 0), (test, 1)):
        counts = torch.bincount(ds.labels, minlength=10).tolist()
        assert counts == [MN10_COUNTS[c][split] for c in MODELNET10_CLASSES]
    assert "modelnet10 from" in train.source
    with pytest.raises(DataFormatError, match=r"modelnet10 \(.*\) holds 512 points per cloud.*1024 asks for more"):
        build_point_datasets("modelnet10", num_points=1024)
    with pytest.raises(DatasetNotFoundError, match="modelnet10_train.h5"):
        load_modelnet10("/nonexistent")


def test_modelnet10_is_the_same_shapes_as_modelnet40_1024():
    """Same name -> same label (by class name) and the first 512 of the same points, bit for bit."""
    import h5py

    names40 = (MN40 / "shape_names.txt").read_text().split()
    for split in ("train", "test"):
        with h5py.File(MN10 / f"modelnet10_{split}.h5", "r") as f10, \
                h5py.File(MN40 / f"modelnet40_1024_{split}.h5", "r") as f40:
            n10, y10 = f10["name"][:], f10["label"][:]
            n40, y40 = f40["name"][:], f40["label"][:]
            assert len(set(n10.tolist())) == len(n10)
            pos = {n: i for i, n in enumerate(n40.tolist())}
            idx = np.array([pos[n] for n in n10.tolist()])  # every modelnet10 shape is in modelnet40_1024
            assert [MODELNET10_CLASSES[c] for c in y10] == [names40[c] for c in y40[idx]]
            assert all(n.decode().rsplit("_", 1)[0] == MODELNET10_CLASSES[c] for n, c in zip(n10, y10))
            # and every modelnet40_1024 shape of these classes is in modelnet10
            wanted = np.isin(y40, [names40.index(c) for c in MODELNET10_CLASSES])
            assert sorted(idx.tolist()) == np.flatnonzero(wanted).tolist()
            sample = np.linspace(0, len(n10) - 1, 64).astype(int)
            d10 = f10["data"][sample.tolist()]
            d40 = np.stack([f40["data"][int(i)] for i in idx[sample]])
            assert d10.dtype == np.float16 and np.array_equal(d10, d40[:, :512])


def test_scale_translate_draws_from_the_recipe_ranges():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3)
    for _ in range(20):
        y = random_scale_translate(x, generator=g)
        # y = x * s + t per axis; recover s and t by least squares
        for d in range(3):
            A = torch.stack([x[:, d], torch.ones(50)], 1)
            s, t = torch.linalg.lstsq(A, y[:, d:d + 1]).solution.flatten()
            assert 2 / 3 - 1e-4 <= s <= 1.5 + 1e-4 and -0.2 - 1e-4 <= t <= 0.2 + 1e-4
    y1 = random_scale_translate(x, generator=torch.Generator().manual_seed(5))
    y2 = random_scale_translate(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(y1, y2) and not torch.equal(y1, x)


def test_shuffle_is_a_permutation_and_augment_composes():
    x = torch.randn(40, 3)
    y = shuffle_points(x, torch.Generator().manual_seed(1))
    assert not torch.equal(x, y)
    assert torch.equal(torch.sort(x[:, 0]).values, torch.sort(y[:, 0]).values)
    aug = PointCloudAugment(scale_range=(1, 1), shift_range=(0, 0))
    z = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(torch.sort(z[:, 1]).values, torch.sort(x[:, 1]).values)
    with pytest.raises(ValueError, match=r"points must be a float tensor of shape \(N, D\)"):
        shuffle_points(torch.randn(2, 4, 3))


def test_the_reader_counts_clouds_whose_points_all_coincide(tmp_path):
    data, labels = class_clouds(6, 32, 3, 0)
    data[[1, 4]] = data[[1, 4], :1]  # two broken scans: every point at the first point's position
    write_h5(tmp_path / "a.h5", data, labels)
    with pytest.warns(UserWarning, match=r"a\.h5: 2 of 6 clouds have every point at one position"):
        points, _ = read_h5_split(tmp_path / "a.h5", 3)
    assert points.shape == (6, 32, 3)
    write_h5(tmp_path / "b.h5", *class_clouds(6, 32, 3, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_h5_split(tmp_path / "b.h5", 3)  # no warning for healthy clouds
