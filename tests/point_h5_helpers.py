"""Tiny h5 files in the ScanObjectNN / ModelNet40 layouts, written by the tests (synthetic, for tests only)."""
from pathlib import Path

import h5py
import numpy as np


def class_clouds(n, points, num_classes, seed):
    """``n`` clouds of ``points`` points whose shape depends on the class (a stretched axis), and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    data = rng.normal(size=(n, points, 3)).astype(np.float32) * 0.1
    for i, c in enumerate(labels):
        data[i, :, c % 3] *= 1 + 4 * (c // 3 + 1) / num_classes * 3
    return data, labels.astype(np.int64)


def write_h5(path, data, labels, data_key="data", label_key="label"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if data is not None:
            f.create_dataset(data_key, data=data)
        if labels is not None:
            f.create_dataset(label_key, data=labels)
    return path


def write_scanobjectnn(h5_root, n_train=30, n_test=15, points=64, num_classes=15, folder="main_split",
                       stem="objectdataset_augmentedrot_scale75", seed=0):
    """Authors' layout: ``h5_root/<folder>/{training,test}_<stem>.h5``; returns (train, test) arrays."""
    train = class_clouds(n_train, points, num_classes, seed)
    test = class_clouds(n_test, points, num_classes, seed + 1)
    write_h5(Path(h5_root) / folder / f"training_{stem}.h5", *train)
    write_h5(Path(h5_root) / folder / f"test_{stem}.h5", test[0], test[1][:, None])  # (n, 1) labels as in the files
    return train, test


def damage_chunk(path, data, labels, chunk=1):
    """Write ``data`` gzip-compressed in chunks of 4 clouds to ``path``, then scramble the bytes of one chunk
    (the file still opens; reading that chunk fails)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, chunks=(4, *data.shape[1:]), compression="gzip")
        f.create_dataset("label", data=labels)
        info = f["data"].id.get_chunk_info(chunk)
    raw = bytearray(Path(path).read_bytes())
    for i in range(info.byte_offset + 8, info.byte_offset + info.size - 8):
        raw[i] ^= 0x5A
    Path(path).write_bytes(bytes(raw))
    return path
