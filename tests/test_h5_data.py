import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pointcoc.data import (DataFormatError, DatasetNotFoundError, PointCloudAugment, build_point_datasets,
                           load_modelnet40, load_modelnet40_mini, load_scanobjectnn, random_scale_translate,
                           read_h5_split, shuffle_points)
from pointcoc.data.h5sets import SCANOBJECTNN_VARIANTS, find_scanobjectnn_files

from point_h5_helpers import class_clouds, damage_chunk, write_h5, write_scanobjectnn

MINI = Path(__file__).resolve().parents[1] / "data" / "modelnet40_mini"


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


def test_modelnet40_layout_concatenates_files(tmp_path):
    parts = [class_clouds(n, 32, 40, s) for n, s in ((5, 0), (7, 1), (4, 2))]
    write_h5(tmp_path / "ply_data_train0.h5", *parts[0])
    write_h5(tmp_path / "ply_data_train1.h5", *parts[1])
    write_h5(tmp_path / "ply_data_test0.h5", *parts[2])
    (tmp_path / "shape_names.txt").write_text("\n".join(f"c{i}" for i in range(40)) + "\n")
    train, test, names = load_modelnet40(tmp_path, num_points=32)
    assert len(train) == 12 and len(test) == 4 and names[39] == "c39"
    torch.testing.assert_close(train[6]["xyz"], torch.from_numpy(parts[1][0][1]))
    with pytest.raises(DatasetNotFoundError, match="ply_data_train"):
        load_modelnet40(tmp_path / "missing")


def test_shipped_modelnet40_mini_is_intact_and_loads():
    for line in (MINI / "SHA256SUMS").read_text().split("\n"):
        if line.strip():
            digest, name = line.split()
            assert hashlib.sha256((MINI / name).read_bytes()).hexdigest() == digest, name
    assert (MINI / "SOURCE.md").is_file()
    train, test, names = build_point_datasets("modelnet40_mini", num_points=1024)
    assert (len(train), len(test), len(names)) == (127, 29, 40)
    assert names[0] == "airplane" and names[-1] == "xbox"
    xyz = train.points
    assert xyz.shape == (127, 1024, 3)
    assert float(xyz.norm(dim=-1).max()) <= 1.0 + 2e-3  # unit sphere (source text files keep 4 decimals)
    with pytest.raises(DatasetNotFoundError, match="modelnet40_mini_train.h5"):
        load_modelnet40_mini("/nonexistent")


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
