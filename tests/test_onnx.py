"""ONNX export (pointcoc.onnx): the op translations give the torch ops' indices; exported models run in ONNX
Runtime and give the eager logits on ragged batches of other sizes. Point models: slow (the exporter's
decompositions take one or two minutes per model on a loaded CPU); the ConvNet and the ops in the default run."""
import os

import pytest
import torch
from torch import nn

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from pointcoc import create_model, list_models  # noqa: E402
from pointcoc.onnx import export_onnx  # noqa: E402
from pointcoc.ops import farthest_point_sample, knn  # noqa: E402

from test_models import _inputs, _n_points  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _run(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = {name: t.numpy() for name, t in zip(("xyz", "features", "lengths"), inputs) if name in names}
    return [torch.from_numpy(o) for o in session.run(None, feed)]


class _Ops(nn.Module):
    def __init__(self, k, samples, skip_near_origin):
        super().__init__()
        self.k, self.samples, self.skip = k, samples, skip_near_origin

    def forward(self, xyz, lengths):
        idx = farthest_point_sample(xyz, self.samples, lengths, skip_near_origin=self.skip)
        res = knn(xyz[:, :5], xyz, self.k, query_lengths=torch.clamp(lengths, max=5), point_lengths=lengths)
        return idx, res.idx, res.dist2


@pytest.mark.parametrize("k, samples, skip", [(4, 7, False), (12, 3, True)])  # k > the smallest set; CUDA FPS rule
def test_op_translations_equal_the_torch_ops(tmp_path, k, samples, skip):
    torch.manual_seed(0)
    xyz = torch.rand(3, 10, 3) * 0.2 - 0.1  # several points within sqrt(1e-3) of the origin
    lengths = torch.tensor([10, 6, 9])
    module = _Ops(k, samples, skip)
    export_onnx(module, (xyz, lengths), tmp_path / "ops.onnx")
    xyz2, lengths2 = torch.rand(4, 10, 3) * 0.2 - 0.1, torch.tensor([10, 8, 6, 3])
    want = module(xyz2, lengths2)
    session = ort.InferenceSession(str(tmp_path / "ops.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, dict(zip([i.name for i in session.get_inputs()], (xyz2.numpy(), lengths2.numpy()))))
    assert torch.equal(torch.from_numpy(got[0]), want[0])
    assert torch.equal(torch.from_numpy(got[1]), want[1])
    torch.testing.assert_close(torch.from_numpy(got[2]), want[2], rtol=0, atol=0)


def _export_and_compare(name, tmp_path, **kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    n = 64 if kwargs else _n_points(model)
    xyz, feats = _inputs(model, 3, n)
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, (xyz, feats, torch.tensor([n, n - 9, n // 2 + 5])), path)
    for batch in (2, 5):
        xyz, feats = _inputs(model, batch, n, seed=batch)
        lengths = torch.full((batch,), n)
        lengths[-1] = max(model.min_points, n - 11)
        with torch.no_grad():
            want = model(xyz, feats, lengths)
        torch.testing.assert_close(_run(path, (xyz, feats, lengths))[0], want, rtol=1e-4, atol=1e-5)


def test_convnet_runs_in_onnx_runtime(tmp_path):
    _export_and_compare("convnet_pixels_small", tmp_path)


# Every layer kind: grouped clusters in 3-D, set-level clusters with features in 2-D, the plain residual stages.
# POINTCOC_ONNX_ALL=1 runs every registered model (about 2 minutes each on a loaded 2-core CPU).
ONNX_MODELS = (sorted(set(list_models()) - {"convnet_pixels_small"}) if os.environ.get("POINTCOC_ONNX_ALL")
               else ["pointmlp_elite_coc", "pointmlp_coc_pixels_small", "pointmlp_pixels"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ONNX_MODELS)
def test_point_models_run_in_onnx_runtime(name, tmp_path):
    _export_and_compare(name, tmp_path)
