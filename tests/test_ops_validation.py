"""Input checks (pointcoc.ops.validation), backend choice and the optional-dependency placeholder."""
import subprocess
import sys

import pytest
import torch

from pointcoc import _optional
from pointcoc.ops import available_backends, farthest_point_sample, get_backend, set_backend, use_backend
from pointcoc.ops.backends import resolve
from pointcoc.ops.validation import check_index, check_lengths, check_points, check_positive_int, check_same_batch


def _raises(fragment, fn, *args, **kwargs):
    with pytest.raises(ValueError) as err:
        fn(*args, **kwargs)
    assert fragment in str(err.value), str(err.value)


def test_check_points():
    check_points("xyz", torch.rand(2, 5, 3))
    check_points("feat", torch.rand(2, 5, 7), dims=None)
    check_points("xyz", torch.tensor([[[float("nan"), 0.0]]]), finite=False)
    _raises("xyz must be a torch.Tensor of shape (B, N, D); got ndarray", check_points, "xyz", torch.rand(2, 5, 3).numpy())
    _raises("xyz must have shape (B, N, D) with D in {2, 3}; got shape (5, 3)", check_points, "xyz", torch.rand(5, 3))
    _raises("feat must have shape (B, N, D) with any D; got shape (5,)", check_points, "feat", torch.rand(5), dims=None)
    _raises("D in {2, 3}; got shape (2, 5, 6)", check_points, "xyz", torch.rand(2, 5, 6))
    _raises("xyz must be a floating-point tensor; got dtype torch.bool", check_points, "xyz", torch.ones(1, 2, 3, dtype=torch.bool))
    _raises("xyz must hold only finite values", check_points, "xyz", torch.tensor([[[0.0, -float("inf")]]]))


def test_check_lengths():
    assert torch.equal(check_lengths("lengths", None, 3, 7), torch.full((3,), 7))
    out = check_lengths("lengths", torch.tensor([1, 7], dtype=torch.int32), 2, 7)
    assert out.dtype == torch.long and out.tolist() == [1, 7]
    _raises("lengths must have values in [1, 7] (empty sets are not allowed); got min 0, max 3", check_lengths, "lengths", torch.tensor([0, 3]), 2, 7)
    _raises("got min 2, max 8", check_lengths, "lengths", torch.tensor([2, 8]), 2, 7)
    _raises("lengths must have shape (B,) = (2,); got shape (3,)", check_lengths, "lengths", torch.tensor([1, 2, 3]), 2, 7)
    _raises("lengths must be an integer tensor of shape (B,); got dtype torch.float32", check_lengths, "lengths", torch.ones(2), 2, 7)
    _raises("lengths must be a LongTensor of shape (B,); got list", check_lengths, "lengths", [1, 2], 2, 7)


def test_check_same_batch_positive_int_and_index():
    check_same_batch("a", torch.rand(2, 1), "b", torch.rand(2, 5))
    _raises("a and b must have the same batch dimension; got 2 and 4", check_same_batch, "a", torch.rand(2, 1), "b", torch.rand(4))
    assert check_positive_int("k", 3) == 3
    assert check_positive_int("k", torch.tensor(4)) == 4
    _raises("k must be an int >= 1; got 0", check_positive_int, "k", 0)
    _raises("k must be an int >= 1; got '3'", check_positive_int, "k", "3")
    _raises("k must be an int >= 1; got tensor(1.5000)", check_positive_int, "k", torch.tensor(1.5))
    check_index("idx", torch.tensor([[-1, 0, 4]]), 1, 5)
    _raises("idx must have values in [-1, 4] (-1 marks padding); got min -1, max 5", check_index, "idx", torch.tensor([[-1, 5]]), 1, 5)
    _raises("idx must have shape (B, ...) with B = 1; got shape ()", check_index, "idx", torch.tensor(0), 1, 5)


def test_set_backend_and_use_backend(monkeypatch):
    monkeypatch.delenv("POINTCOC_BACKEND", raising=False)
    cpu = torch.device("cpu")
    automatic = resolve("fps", cpu).name
    assert get_backend() is None
    with use_backend("torch"):
        assert get_backend() == "torch" and resolve("fps", cpu).name == "torch" and resolve("knn", cpu).name == "torch"
        with use_backend(None):
            assert resolve("fps", cpu).name == automatic
        assert get_backend() == "torch"
    assert get_backend() is None
    set_backend("torch")
    try:
        assert resolve("knn", cpu).name == "torch"
    finally:
        set_backend(None)
    assert resolve("fps", cpu).name == automatic
    _raises("name must name a registered backend", set_backend, "fastest")
    _raises("got 'cuda'", set_backend, "cuda")


def test_forced_backend_missing_for_an_op_or_device_falls_back(monkeypatch):
    monkeypatch.delenv("POINTCOC_BACKEND", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # resolve() looks only at the device type
    automatic_fps = resolve("fps", cpu).name
    with use_backend("mm"):  # a kNN backend only: FPS keeps its automatic choice
        assert resolve("knn", cpu).name == "mm" and resolve("knn", cuda).name == "mm"
        assert resolve("fps", cpu).name == automatic_fps
    if "numba" in available_backends("fps"):
        with use_backend("numba"):  # CPU only: CUDA tensors go to a backend that runs there
            assert resolve("fps", cpu).name == "numba"
            assert "cuda" in resolve("fps", cuda).devices


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("POINTCOC_BACKEND", "torch")
    assert get_backend() == "torch" and resolve("fps", torch.device("cpu")).name == "torch"
    with use_backend("mm"):  # set_backend / use_backend win over the environment
        assert resolve("knn", torch.device("cpu")).name == "mm"
    assert resolve("knn", torch.device("cpu")).name == "torch"
    monkeypatch.setenv("POINTCOC_BACKEND", "bogus")
    _raises("environment variable POINTCOC_BACKEND must name a registered backend", farthest_point_sample, torch.rand(1, 4, 3), 2)
    monkeypatch.setenv("POINTCOC_BACKEND", "")
    assert get_backend() is None


def test_environment_variable_in_a_fresh_process():
    code = (
        "import torch, pointcoc.ops as o; from pointcoc.ops.backends import resolve;"
        "print(resolve('fps', torch.device('cpu')).name, resolve('knn', torch.device('cpu')).name)"
    )
    env = {"POINTCOC_BACKEND": "torch", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["torch", "torch"]


def test_optional_placeholder():
    if _optional.WITH_PYTORCH3D:
        assert "pytorch3d" in available_backends("fps")
        return
    assert "pytorch3d" not in available_backends("fps")
    assert not _optional.pytorch3d_ops
    with pytest.raises(ImportError, match="'knn_points' needs package pytorch3d"):
        _optional.pytorch3d_ops.knn_points


def test_works_without_numba_pytorch3d_and_triton():
    code = (
        "import sys; sys.modules['numba'] = None; sys.modules['pytorch3d'] = None; sys.modules['triton'] = None\n"
        "import torch, pointcoc.ops as o\n"
        "assert o.available_backends('fps') == ['torch'], o.available_backends()\n"
        "x = torch.rand(2, 50, 3)\n"
        "print(o.farthest_point_sample(x, 5).shape[1], o.knn(x, x, 4).idx.shape[2])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "4"]


@pytest.mark.parametrize("op, backend", [("knn", b) for b in available_backends("knn")]
                         + [("fps", b) for b in available_backends("fps")])
def test_absurd_k_and_n_samples_are_refused_before_anything_is_allocated(op, backend):
    from pointcoc.ops import knn
    from pointcoc.ops.validation import MAX_PADDING

    name = "k" if op == "knn" else "n_samples"

    def indices(xyz, count):  # (B, count) FPS indices or (B, M, count) kNN indices
        return knn(xyz, xyz, count, backend=backend).idx if op == "knn" else \
            farthest_point_sample(xyz, count, backend=backend)

    xyz = torch.rand(2, 10, 3)
    for count in (2**40, 2**64):  # 2**40 columns would be terabytes; 2**64 does not fit the op's int64
        _raises(f"{name} must be at most max(N, {MAX_PADDING}) = {MAX_PADDING} for sets of N = 10 points (beyond N "
                f"the results are only padding); got {name} = {count}", indices, xyz, count)
    if backend in ("torch", "mm"):  # what stays allowed: padding up to the cap, and any count up to N
        padded = indices(xyz, 24)
        assert padded.shape[-1] == 24 and bool((padded[..., 10:] == -1).all())
        assert indices(xyz, MAX_PADDING).shape[-1] == MAX_PADDING
        assert indices(torch.rand(1, MAX_PADDING + 5, 2), MAX_PADDING + 5).shape[-1] == MAX_PADDING + 5
