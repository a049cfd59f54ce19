"""torch.compile: the FPS/kNN custom ops trace into one graph, and compiled models give the eager logits and gradients.

Default tests use Dynamo without code generation (backends "eager" / "aot_eager": seconds); the
inductor tests compile C++ on the CPU (minutes on a loaded 2-core machine) and are marked slow.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from pointcoc import create_model
from pointcoc.ops import farthest_point_sample, gather, knn
from pointcoc.ops.library import fps_op, knn_op

SMALL = dict(num_classes=5, embed_dim=8, k_neighbors=4)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _sample_and_group(xyz, lengths):
    """FPS, kNN and gathers as a model's grouper uses them: (grouped xyz, squared distances, indices)."""
    idx = farthest_point_sample(xyz, 6, lengths)
    anchors = gather(xyz, idx)
    n_anchors = torch.clamp(lengths, max=6)
    res = knn(anchors, xyz, 4, query_lengths=n_anchors, point_lengths=lengths)
    return gather(xyz, res.idx), res.dist2, res.idx


def test_custom_ops_pass_opcheck():
    torch.manual_seed(0)
    xyz = torch.rand(3, 20, 3)
    lengths = torch.tensor([20, 9, 3])
    torch.library.opcheck(fps_op, (xyz, 7, lengths, False, None, False))
    torch.library.opcheck(knn_op, (xyz[:, :5], xyz, 4, torch.tensor([5, 5, 2]), lengths, None))


def test_ops_compile_into_one_graph_with_equal_results_gradients_and_value_checks():
    torch.manual_seed(0)
    xyz = torch.rand(3, 30, 3, requires_grad=True)
    lengths = torch.tensor([30, 12, 5])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_sample_and_group, backend=counter, fullgraph=True)
    want = _sample_and_group(xyz, lengths)
    got = compiled(xyz, lengths)
    assert counter.frame_count == 1
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    grad_want = torch.autograd.grad(want[0].sum() + want[1].nan_to_num(posinf=0).sum(), xyz)[0]
    grad_got = torch.autograd.grad(got[0].sum() + got[1].nan_to_num(posinf=0).sum(), xyz)[0]
    torch.testing.assert_close(grad_got, grad_want, rtol=0, atol=0)
    # The value checks run inside the ops, on the real tensors, compiled or not.
    bad = xyz.detach().clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="xyz must hold only finite values"):
        compiled(bad, lengths)
    with pytest.raises(ValueError, match=r"lengths must have values in \[1, 30\]"):
        compiled(xyz.detach(), torch.tensor([30, 31, 5]))


def _train_step_outputs(model, xyz, features=None, lengths=None):
    """Logits and parameter gradients of one train-mode forward/backward with a fixed dropout seed."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    logits = model(xyz, features, lengths)
    logits.square().sum().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters()]


def _inputs(name, batch=4, n=64):
    g = torch.Generator().manual_seed(0)
    if "pixels" in name:
        return torch.rand(batch, n, 2, generator=g) - 0.5, torch.rand(batch, n, 1, generator=g)
    return torch.rand(batch, n, 3, generator=g) * 2 - 1, None


def _check_compiled_matches_eager(name, backend, rtol=0.0, atol=0.0, **kwargs):
    torch.manual_seed(0)
    model = create_model(name, **{**SMALL, **kwargs})
    xyz, features = _inputs(name)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter)
    want_logits, want_grads = _train_step_outputs(model, xyz, features)
    got_logits, got_grads = _train_step_outputs(compiled, xyz, features)
    torch.testing.assert_close(got_logits, want_logits, rtol=rtol, atol=atol)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    # Full sets: the input check runs before the graph (one break), the rest is one graph.
    assert counter.frame_count == 2
    return model, compiled, counter


def test_compiled_pointmlp_coc_matches_eager_in_one_graph():
    two_stages = dict(pre_blocks=(1, 1), pos_blocks=(1, 1), k_neighbors=(4, 4), reducers=(2, 2), dim_expansion=(2, 2))
    _check_compiled_matches_eager("pointmlp_coc", "eager", **two_stages)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pointmlp", "pointmlp_elite", "pointmlp_coc", "pointmlp_coc_pixels"])
def test_compiled_models_match_eager_through_aot_autograd(name):
    model, compiled, _ = _check_compiled_matches_eager(name, "aot_eager")
    # Eval mode and a ragged batch (recompiled; data-dependent sizes may split the graph): the same logits.
    xyz, features = _inputs(name)
    lengths = torch.tensor([64, 40, 64, 20])
    model.eval()
    with torch.no_grad():
        for args in ((xyz, features, None), (xyz, features, lengths)):
            torch.testing.assert_close(compiled(*args), model(*args), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pointmlp", "pointmlp_elite", "pointmlp_coc"])
def test_inductor_compiled_models_match_eager(name):
    """Generated C++ code: float32 rounding differs from eager (fused reductions), so compare to a tolerance.

    ``fallback_random`` makes the compiled dropout draw from torch's generator as eager does.
    """
    with torch._inductor.config.patch(fallback_random=True):
        _check_compiled_matches_eager(name, "inductor", rtol=1e-3, atol=1e-3)
