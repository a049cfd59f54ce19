"""Context cluster: segment-sum core vs the dense-mask reference, ragged, permutations, module forms."""
import pytest
import torch
import torch.nn.functional as F

from pointcoc.functional import context_cluster as functional_cc
from pointcoc.layers import ContextCluster, context_cluster, context_cluster_dense, record_assignments
from pointcoc.ops import farthest_point_sample


def _inputs(batch, n, m, ds, dv, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch, n, ds), (batch, n, dv), (batch, m, ds), (batch, m, dv)]
    tensors = [torch.randn(s, generator=g, dtype=dtype).requires_grad_(True) for s in shapes]
    alpha = torch.tensor(1.3, dtype=dtype, requires_grad=True)
    beta = torch.tensor(-0.2, dtype=dtype, requires_grad=True)
    return tensors + [alpha, beta]


def _grads(fn, args, lengths, weight):
    out, assign = fn(*args, lengths=lengths)
    grads = torch.autograd.grad((out * weight).sum(), args)
    return out, assign, grads


def test_functional_reexport():
    assert functional_cc is context_cluster


@pytest.mark.parametrize("batch,n,m,ds,dv", [(1, 7, 1, 3, 2), (2, 40, 5, 8, 6), (3, 100, 12, 4, 16), (2, 30, 30, 5, 5)])
@pytest.mark.parametrize("ragged", [False, True])
def test_matches_dense_reference(batch, n, m, ds, dv, ragged):
    args = _inputs(batch, n, m, ds, dv, seed=n + m)
    lengths = torch.randint(1, n + 1, (batch,), generator=torch.Generator().manual_seed(1)) if ragged else None
    weight = torch.randn(batch, n, dv, dtype=torch.float64)
    out, assign, grads = _grads(context_cluster, args, lengths, weight)
    out_d, assign_d, grads_d = _grads(context_cluster_dense, args, lengths, weight)
    assert torch.equal(assign, assign_d)
    torch.testing.assert_close(out, out_d, atol=1e-5, rtol=1e-5)
    for g, gd in zip(grads, grads_d):
        torch.testing.assert_close(g, gd, atol=1e-5, rtol=1e-5)
    assert all(g.abs().sum() > 0 for g in grads)


def test_chunked_assignment_matches_dense_reference(monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["pointcoc.layers.context_cluster"], "_SIM_CHUNK_ELEMENTS", 50)
    args = _inputs(3, 61, 9, 5, 4, seed=11)  # chunks of 50 // (3 * 9) = 1 point
    lengths = torch.tensor([61, 40, 2])
    weight = torch.randn(3, 61, 4, dtype=torch.float64)
    out, assign, grads = _grads(context_cluster, args, lengths, weight)
    out_d, assign_d, grads_d = _grads(context_cluster_dense, args, lengths, weight)
    assert torch.equal(assign, assign_d)
    torch.testing.assert_close(out, out_d, atol=1e-5, rtol=1e-5)
    for g, gd in zip(grads, grads_d):
        torch.testing.assert_close(g, gd, atol=1e-5, rtol=1e-5)


def test_matches_dense_reference_float32():
    args = [a.detach().float().requires_grad_(True) for a in _inputs(2, 300, 20, 16, 16, seed=3)]
    weight = torch.randn(2, 300, 16)
    out, _, grads = _grads(context_cluster, args, torch.tensor([300, 123]), weight)
    out_d, _, grads_d = _grads(context_cluster_dense, args, torch.tensor([300, 123]), weight)
    torch.testing.assert_close(out, out_d, atol=1e-5, rtol=1e-5)
    for g, gd in zip(grads, grads_d):
        torch.testing.assert_close(g, gd, atol=1e-4, rtol=1e-4)


def test_formula_by_hand():
    """One set, brute force over clusters with Python loops."""
    ps, pv, cs, cv, alpha, beta = [a.detach() for a in _inputs(1, 25, 4, 3, 2, seed=5)]
    out, assign = context_cluster(ps, pv, cs, cv, alpha, beta)
    cos = torch.stack([F.cosine_similarity(ps[0], cs[0, c][None], dim=-1) for c in range(4)], 1)  # (N, M)
    want_assign = cos.argmax(1)
    assert torch.equal(assign[0], want_assign)
    for i in range(25):
        c = int(want_assign[i])
        members = (want_assign == c).nonzero().flatten()
        w = torch.sigmoid(alpha * cos[members, c] + beta)
        g = (cv[0, c] + (w[:, None] * pv[0, members]).sum(0)) / (1 + w.sum())
        torch.testing.assert_close(out[0, i], torch.sigmoid(alpha * cos[i, c] + beta) * g)


def test_padding_never_influences():
    args = [a.detach() for a in _inputs(2, 30, 6, 4, 5, seed=9)]
    lengths = torch.tensor([30, 17])
    out, assign = context_cluster(*args, lengths=lengths)
    changed = [a.clone() for a in args]
    changed[0][1, 17:] = 1e3
    changed[1][1, 17:] = -7.0
    out2, assign2 = context_cluster(*changed, lengths=lengths)
    torch.testing.assert_close(out, out2)
    assert torch.equal(assign, assign2)
    assert (assign[1, 17:] == -1).all() and (out[1, 17:] == 0).all()
    alone, alone_assign = context_cluster(*[a[1:, :17] if i < 2 else a[1:] for i, a in enumerate(args[:4])],
                                          args[4], args[5])
    torch.testing.assert_close(out[1, :17], alone[0])
    assert torch.equal(assign[1, :17], alone_assign[0])


def test_permutation_equivariance():
    args = [a.detach() for a in _inputs(2, 50, 7, 6, 4, seed=2)]
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    out, assign = context_cluster(*args)
    out_p, assign_p = context_cluster(args[0][:, perm], args[1][:, perm], *args[2:])
    torch.testing.assert_close(out_p, out[:, perm])
    assert torch.equal(assign_p, assign[:, perm])


@pytest.mark.parametrize("fn", [context_cluster, context_cluster_dense])
def test_bad_inputs(fn):
    ps, pv, cs, cv, a, b = [x.detach() for x in _inputs(2, 10, 3, 4, 5)]
    with pytest.raises(ValueError, match="point_sim must have shape"):
        fn(ps[0], pv, cs, cv, a, b)
    with pytest.raises(ValueError, match="center_sim must have shape"):
        fn(ps, pv, cs[..., :2], cv, a, b)
    with pytest.raises(ValueError, match="point_val must have shape"):
        fn(ps, pv[:, :4], cs, cv, a, b)
    with pytest.raises(ValueError, match="center_val must have shape"):
        fn(ps, pv, cs, cv[..., :2], a, b)
    with pytest.raises(ValueError, match="same batch dimension"):
        fn(ps, pv, cs[:1], cv, a, b)
    with pytest.raises(ValueError, match="alpha must be a tensor with one element"):
        fn(ps, pv, cs, cv, torch.ones(2), b)
    with pytest.raises(ValueError, match="lengths must have values in"):
        fn(ps, pv, cs, cv, a, b, lengths=torch.tensor([0, 3]))


# ---- module -------------------------------------------------------------------------------------

def _set_level_reference(cc: ContextCluster, x, xyz):
    """One set (1, N, C), brute force: FPS centers, cdist kNN means, dense core, per head."""
    n = x.shape[1]
    m = min(cc.n_centers, n)
    centers = farthest_point_sample(xyz, m)
    dist2 = torch.cdist(xyz[0, centers[0]], xyz[0]) ** 2
    nbr = dist2.topk(min(cc.center_k, n), largest=False).indices  # (M, k)
    sim, val = cc.fc_sim(x), cc.fc_val(x)
    c_sim, c_val = sim[0, nbr].mean(1)[None], val[0, nbr].mean(1)[None]
    outs = []
    for h in range(cc.heads):
        sl = slice(h * cc.head_dim, (h + 1) * cc.head_dim)
        o, _ = context_cluster_dense(sim[..., sl], val[..., sl], c_sim[..., sl], c_val[..., sl], cc.alpha, cc.beta)
        outs.append(o)
    return x + cc.fc_out(torch.cat(outs, -1))


@pytest.mark.parametrize("heads", [1, 2])
def test_set_level_module_matches_reference_and_ragged(heads):
    torch.manual_seed(0)
    # center_k=3 on sets of >= 12 points: no two centers share a neighbourhood (an exact tie of
    # similarities could go either way in different matrix-product kernels)
    cc = ContextCluster(12, heads=heads, head_dim=5, n_centers=6, center_k=3).double()
    lengths = torch.tensor([40, 23, 12])
    x = torch.randn(3, 40, 12, dtype=torch.float64)
    xyz = torch.rand(3, 40, 2, dtype=torch.float64)
    out = cc(x, xyz, lengths)
    for b in range(3):
        n = int(lengths[b])
        alone = cc(x[b : b + 1, :n], xyz[b : b + 1, :n])
        torch.testing.assert_close(out[b : b + 1, :n], alone, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(alone, _set_level_reference(cc, x[b : b + 1, :n], xyz[b : b + 1, :n]))
        assert (out[b, n:] == 0).all()
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cc.parameters())


def test_grouped_module_masks_neighbours():
    torch.manual_seed(1)
    cc = ContextCluster(16).double()
    assert cc.head_dim == 32 and cc.heads == 1
    x = torch.randn(5, 10, 16, dtype=torch.float64)
    counts = torch.tensor([10, 3, 7, 1, 10])
    mask = torch.arange(10)[None] < counts[:, None]
    out = cc(x, mask=mask)
    for g in range(5):
        alone = cc(x[g : g + 1, : counts[g]])
        torch.testing.assert_close(out[g : g + 1, : counts[g]], alone)
        sim, val = cc.fc_sim(x[g, : counts[g]]), cc.fc_val(x[g, : counts[g]])
        w = torch.sigmoid(cc.alpha * F.cosine_similarity(sim, sim.mean(0, keepdim=True), dim=-1) + cc.beta)
        agg = (val.mean(0) + (w[:, None] * val).sum(0)) / (1 + w.sum())
        torch.testing.assert_close(alone[0], x[g, : counts[g]] + cc.fc_out(w[:, None] * agg))


def test_record_assignments_and_permutation():
    torch.manual_seed(2)
    cc = ContextCluster(8, n_centers=5, center_k=3).eval()
    x, xyz = torch.randn(2, 30, 8), torch.rand(2, 30, 2)
    lengths = torch.tensor([30, 20])
    cc(x, xyz, lengths)
    assert cc.last_assignment is None
    with record_assignments(cc):
        out = cc(x, xyz, lengths)
    assert not cc.record
    assert cc.last_assignment.shape == (2, 30) and cc.last_assignment.dtype == torch.long
    assert (cc.last_assignment[1, 20:] == -1).all() and (cc.last_assignment[:, :20] >= 0).all()
    assert cc.last_center_idx.shape == (2, 5)
    assert torch.equal(cc.last_xyz, xyz) and torch.equal(cc.last_lengths, lengths)
    out_again, assign = cc(x, xyz, lengths, return_assignment=True)
    assert torch.equal(out_again, out) and torch.equal(assign[:, 0], cc.last_assignment)
    assert int(cc.last_assignment.max()) < 5
    # permuting points that keep index 0 (the FPS start) in place permutes the outputs
    perm = torch.cat([torch.tensor([0]), torch.randperm(29) + 1])
    out_p = cc(x[:1, perm], xyz[:1, perm])
    torch.testing.assert_close(out_p, out[:1, perm], atol=1e-5, rtol=1e-5)


def test_region_partition_restricts_assignment():
    torch.manual_seed(3)
    cc = ContextCluster(8, n_centers=16, center_k=2, regions=2)
    xyz = torch.rand(1, 200, 2)
    with record_assignments(cc):
        cc(torch.randn(1, 200, 8), xyz)
    lo, hi = xyz[0].min(0).values, xyz[0].max(0).values
    cells = ((xyz[0] - lo) / (hi - lo) * 2).long().clamp(0, 1)  # 2 x 2 cells over the bounding box
    centers = cc.last_center_idx[0][cc.last_assignment[0]]
    center_cells = cells[centers]
    point_cells = cells
    cells_with_center = {tuple(c.tolist()) for c in cells[cc.last_center_idx[0]]}
    for i in range(200):
        if tuple(point_cells[i].tolist()) in cells_with_center:
            assert torch.equal(center_cells[i], point_cells[i])


def test_module_bad_inputs():
    cc = ContextCluster(8, n_centers=4)
    with pytest.raises(ValueError, match="xyz .* is required"):
        cc(torch.randn(1, 10, 8))
    with pytest.raises(ValueError, match="same number of points"):
        cc(torch.randn(1, 10, 8), torch.rand(1, 9, 3))
    with pytest.raises(ValueError, match="finite"):
        cc(torch.randn(1, 10, 8), torch.full((1, 10, 3), float("nan")))
    with pytest.raises(ValueError, match="heads must be an int"):
        ContextCluster(8, heads=0)


def test_centers_with_the_same_neighbourhood_are_dropped():
    cc = ContextCluster(8, n_centers=3, center_k=5)
    with record_assignments(cc):
        out = cc(torch.randn(2, 5, 8), torch.rand(2, 5, 2), torch.tensor([5, 4]))
    # every center's 5 nearest points are the whole set: one cluster remains
    assert (cc.last_assignment[0] == 0).all() and (cc.last_assignment[1, :4] == 0).all()
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    args = [a.detach().float() for a in _inputs(2, 500, 12, 8, 8, seed=4)]
    lengths = torch.tensor([500, 321])
    out, assign = context_cluster(*args, lengths=lengths)
    out_c, assign_c = context_cluster(*[a.cuda() for a in args], lengths=lengths.cuda())
    out_d, _ = context_cluster_dense(*[a.cuda() for a in args], lengths=lengths.cuda())
    torch.testing.assert_close(out_c.cpu(), out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_c, out_d, atol=1e-5, rtol=1e-4)
    assert (assign_c.cpu() != assign).float().mean() < 0.01  # near-ties may round differently
