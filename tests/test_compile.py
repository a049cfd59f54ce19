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
def fresh_dynamo(one_thread):
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


def _inputs(name, batch=4, n=64, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    if "pixels" in name:
        return (torch.rand(batch, n, 2, generator=g) - 0.5).to(dtype), torch.rand(batch, n, 1, generator=g).to(dtype)
    return (torch.rand(batch, n, 3, generator=g) * 2 - 1).to(dtype), None


def _assert_close_to_scale(got, want, tol):
    """Equal (tol 0), or within tol relative to the largest magnitude of ``want``: some gradients are
    exactly 0 in exact arithmetic (a bias before train-mode BatchNorm) and hold only rounding noise."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale)


def _check_compiled_matches_eager(name, backend, tol=0.0, dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    model = create_model(name, **{**SMALL, **kwargs}).to(dtype)
    xyz, features = _inputs(name, dtype=dtype)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter)
    want_logits, want_grads = _train_step_outputs(model, xyz, features)
    got_logits, got_grads = _train_step_outputs(compiled, xyz, features)
    _assert_close_to_scale(got_logits, want_logits, tol)
    grad_scale = max(g.abs().max().item() for g in want_grads)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * grad_scale)
    # Full sets: the input check runs before the graph (one break), the rest is one graph.
    assert counter.frame_count == 2
    return model, compiled


TWO_STAGES = dict(pre_blocks=(1, 1), pos_blocks=(1, 1), k_neighbors=(4, 4), reducers=(2, 2), dim_expansion=(2, 2))


def test_compiled_pointmlp_coc_matches_eager_in_one_graph():
    _check_compiled_matches_eager("pointmlp_coc", "eager", **TWO_STAGES)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pointmlp", "pointmlp_elite", "pointmlp_coc", "pointmlp_coc_pixels"])
def test_compiled_models_match_eager_through_aot_autograd(name):
    model, compiled = _check_compiled_matches_eager(name, "aot_eager")
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
    """Generated C++ code (two-stage models: compiling takes minutes on a loaded CPU).

    Train mode in float64: logits and gradients equal to rounding (in float32, train-mode BatchNorm on
    4 sets amplifies the rounding of reordered sums in the gradients beyond any useful tolerance).
    Eval mode in float32: logits to 1e-4. ``fallback_random`` makes the compiled dropout draw from
    torch's generator as eager does.
    """
    with torch._inductor.config.patch(fallback_random=True):
        model, compiled = _check_compiled_matches_eager(name, "inductor", tol=1e-9, dtype=torch.float64, **TWO_STAGES)
    if name == "pointmlp_coc":
        model.float().eval()
        xyz, _ = _inputs(name)
        with torch.no_grad():
            _assert_close_to_scale(compiled(xyz), model(xyz), 1e-4)


def test_a_compiled_run_on_the_cpu_says_what_it_costs_and_what_torchs_warnings_mean(tmp_path, monkeypatch):
    from pointcoc.engine import fit
    from test_engine import NAMES, TinyPointNet, config, datasets

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)  # the note, not minutes of inductor
    train, test = datasets()
    with pytest.warns(UserWarning, match=r"--compile on a CPU: the first steps of training and of evaluation compile "
                                         r"for minutes .* are about speed only: the results are the eager model's"):
        fit(TinyPointNet(), train, test, config(epochs=1, compile=True), tmp_path / "run", NAMES)
