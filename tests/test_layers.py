"""Grouper, pointwise blocks and reducers against brute-force references."""
import pytest
import torch

from pointcoc.layers import (GroupIndex, GroupTransfer, LocalGrouper, MaskedBatchNorm, ResidualPointBlock, masked_max,
                             masked_std)
from pointcoc.ops import farthest_point_sample


def test_masked_std_matches_torch_std():
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    mask = torch.rand(3, 5, 4) > 0.3
    got = masked_std(x, mask)
    for b in range(3):
        torch.testing.assert_close(got[b], x[b][mask[b]].std())
    torch.testing.assert_close(masked_std(x, torch.ones(3, 5, 4, dtype=torch.bool)), x.reshape(3, -1).std(-1))


def test_masked_batchnorm_ignores_padding_in_training():
    torch.manual_seed(0)
    bn = MaskedBatchNorm(4)
    ref = torch.nn.BatchNorm1d(4)
    x = torch.randn(2, 10, 4)
    mask = torch.arange(10)[None] < torch.tensor([[10], [6]])
    x_bad = x.clone()
    x_bad[~mask] = 1e4
    out = bn(x_bad, mask)
    want = ref(x[mask])
    torch.testing.assert_close(out[mask], want)
    assert (out[~mask] == 0).all()
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)


def test_masked_max():
    x = torch.randn(2, 3, 5, 4)
    mask = torch.rand(2, 3, 5) > 0.5
    mask[0, 0] = False
    got = masked_max(x, mask, dim=2)
    for b in range(2):
        for s in range(3):
            want = x[b, s][mask[b, s]].max(0).values if mask[b, s].any() else torch.zeros(4)
            torch.testing.assert_close(got[b, s], want)
    torch.testing.assert_close(masked_max(x, None, dim=2), x.max(2).values)
    with pytest.raises(ValueError, match="channel"):
        masked_max(x, mask, dim=-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, dim", [((3, 7, 24, 5), 2), ((4, 33, 6), 1), ((2, 3, 1, 4), 2)])
@pytest.mark.parametrize("masked", [False, True])
def test_masked_max_fast_path_equals_torch_max_values_and_gradient(dtype, shape, dim, masked):
    """The CPU max-pool path gives torch.max's values and its gradient bitwise, ties included (ReLU zeros,
    small integers: the first maximal entry gets the gradient, as torch.max)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, shape, generator=g).clamp_min(0).to(dtype)
    mask = (torch.rand(shape[:-1], generator=g) > 0.3) if masked else None
    probe = torch.randn(*shape[:dim], *shape[dim + 1:], generator=g).to(dtype)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got = masked_max(a, mask, dim)
    if mask is None:
        want = b.max(dim).values
    else:
        filled = b.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        want = filled.max(dim).values.masked_fill(~mask.any(dim).unsqueeze(-1), 0.0)
    assert torch.equal(got, want)
    (got * probe).sum().backward()
    (want * probe).sum().backward()
    assert torch.equal(a.grad, b.grad)


def _grouper_reference(grouper, xyz, feats):
    """One set (N, D), (N, C): the published grouper written out with cdist/topk (no padding)."""
    n = xyz.shape[0]
    s = max(n // grouper.reducer, 1)
    anchors = farthest_point_sample(xyz[None], s)[0]
    nbr = (torch.cdist(xyz[anchors], xyz) ** 2).topk(min(grouper.k, n), largest=False).indices
    grouped, ref = feats[nbr], feats[anchors][:, None]
    if grouper.use_xyz:
        grouped = torch.cat([grouped, xyz[nbr]], -1)
        ref = torch.cat([feats[anchors], xyz[anchors]], -1)[:, None]
    diff = grouped - ref
    normed = grouper.affine_alpha * diff / (diff.std() + 1e-5) + grouper.affine_beta
    return xyz[anchors], feats[anchors], normed


@pytest.mark.parametrize("use_xyz", [False, True])
def test_local_grouper_matches_reference_and_ragged(use_xyz):
    torch.manual_seed(0)
    grouper = LocalGrouper(5, k=6, reducer=2, coord_dim=3, use_xyz=use_xyz).double()
    with torch.no_grad():
        grouper.affine_alpha.uniform_(0.5, 1.5)
        grouper.affine_beta.uniform_(-0.5, 0.5)
    xyz = torch.rand(3, 30, 3, dtype=torch.float64)
    feats = torch.randn(3, 30, 5, dtype=torch.float64)
    lengths = torch.tensor([30, 17, 9])
    g = grouper(xyz, feats, lengths)
    assert torch.equal(g.lengths, torch.tensor([15, 8, 4]))
    assert g.grouped.shape == (3, 15, 6, 5 + (3 if use_xyz else 0))
    for b in range(3):
        n, s = int(lengths[b]), int(g.lengths[b])
        want_xyz, want_anchor, want = _grouper_reference(grouper, xyz[b, :n], feats[b, :n])
        torch.testing.assert_close(g.xyz[b, :s], want_xyz)
        torch.testing.assert_close(g.anchors[b, :s], want_anchor)
        torch.testing.assert_close(g.grouped[b, :s], want)
        assert g.mask[b, :s].all() and not g.mask[b, s:].any()
        assert (g.anchor_idx[b, s:] == -1).all()


def test_local_grouper_masks_short_groups():
    grouper = LocalGrouper(2, k=8, reducer=2, coord_dim=2)
    xyz, feats = torch.rand(2, 20, 2), torch.randn(2, 20, 2)
    g = grouper(xyz, feats, torch.tensor([20, 5]))
    assert g.mask[1, :2].sum(-1).tolist() == [5, 5]  # only 5 real points to group
    assert not g.mask[1, 2:].any()


def test_group_transfer_equals_linear_on_concatenation():
    torch.manual_seed(0)
    t = GroupTransfer(7, 4, 10, bias=True).eval()
    full = torch.nn.Linear(11, 10)
    with torch.no_grad():
        full.weight.copy_(torch.cat([t.neighbour.weight, t.anchor.weight], 1))
        full.bias.copy_(t.neighbour.bias)
        t.norm.running_mean.uniform_(-1, 1)
        t.norm.running_var.uniform_(0.5, 2)
    grouped, anchors = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 4)
    want = torch.relu(t.norm(full(torch.cat([grouped, anchors[:, :, None].expand(-1, -1, 5, -1)], -1))))
    # normalize=None and an identity neighbour index: the grouper hands the neighbours' features through
    grouper = LocalGrouper(7, k=5, normalize=None)
    idx = torch.arange(15).reshape(1, 3, 5).expand(2, -1, -1)
    index = GroupIndex(None, None, None, idx, None)
    u = grouped.reshape(2, 15, 7)
    torch.testing.assert_close(t(grouper, u, anchors, index, None), want)
    assert sum(p.numel() for p in t.parameters()) == sum(p.numel() for p in full.parameters()) + 20


@pytest.mark.parametrize("normalize,use_xyz,ragged", [("anchor", False, False), ("anchor", True, True),
                                                      ("center", False, True), ("center", True, False),
                                                      (None, False, True)])
def test_linear_of_groups_equals_linear_on_normalised_groups(normalize, use_xyz, ragged):
    """The per-point product, gathered, against the Linear on the materialised groups: values and every gradient."""
    torch.manual_seed(1)
    grouper = LocalGrouper(5, k=6, reducer=2, coord_dim=3, use_xyz=use_xyz, normalize=normalize).double()
    if normalize is not None:
        with torch.no_grad():
            grouper.affine_alpha.uniform_(0.5, 1.5)
            grouper.affine_beta.uniform_(-0.5, 0.5)
    weight = torch.randn(9, grouper.norm_channels, dtype=torch.float64, requires_grad=True)
    xyz = torch.rand(3, 30, 3, dtype=torch.float64, requires_grad=True)
    feats = torch.randn(3, 30, 5, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([30, 17, 9]) if ragged else None
    probe = torch.randn(3, 15, 6, 9, dtype=torch.float64)
    offset = torch.randn(3, 15, 9, dtype=torch.float64, requires_grad=True)

    def outputs(folded):
        if folded:
            index = grouper.index(xyz, lengths)
            u = grouper.point_inputs(xyz, feats)
            scale = None if normalize is None else grouper.inverse_std(u, index)
            out, mask = grouper.linear_of_groups(weight, u, index, scale, offset=offset), index.mask
        else:
            groups = grouper(xyz, feats, lengths)
            out, mask = torch.nn.functional.linear(groups.grouped, weight) + offset[:, :, None], groups.mask
        if mask is not None:  # padded neighbours are arbitrary in both
            out = out * mask[..., None]
        params = [weight, offset, xyz, feats] + list(grouper.parameters())
        return [out] + list(torch.autograd.grad((out * probe).sum(), params, allow_unused=True, materialize_grads=True))

    for got, want in zip(outputs(True), outputs(False)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    index, u = grouper.index(xyz, lengths), grouper.point_inputs(xyz, feats)
    wrong_scale = torch.ones(3, dtype=torch.float64) if normalize is None else None
    with pytest.raises(ValueError, match="scale must be"):
        grouper.linear_of_groups(weight, u, index, wrong_scale)


@pytest.mark.parametrize("normalize", ["anchor", "center"])
@pytest.mark.parametrize("ragged", [False, True])
def test_inverse_std_from_sums_equals_std_of_the_differences(normalize, ragged):
    """LocalGrouper.inverse_std (sums over points and groups) against 1 / (std + 1e-5) of the formed differences
    (float64, values and gradients), with groups larger than small sets (masked neighbours), a padded
    batch, and a set of equal points (exactly 1 / 1e-5, zero gradient)."""
    from pointcoc.layers.grouper import _inverse_std

    g = torch.Generator().manual_seed(0)
    grouper = LocalGrouper(4, k=8, reducer=2, coord_dim=3, normalize=normalize).double()
    xyz = torch.rand(4, 12, 3, generator=g, dtype=torch.float64)
    lengths = torch.tensor([12, 5, 9, 7]) if ragged else None  # 5 and 7 < k: masked neighbours
    if not ragged:
        grouper.k = 16  # more neighbours than points: every group masked past 12
    index = grouper.index(xyz, lengths)
    assert index.mask is not None and not bool(index.mask.all())
    u = torch.randn(4, 12, 4, generator=g, dtype=torch.float64) * 3 + 5  # a large mean: the sums must not cancel
    u[2] = 0.25  # every point of set 2 equal
    weights = torch.randn(4, generator=g, dtype=torch.float64)
    a, b = u.clone().requires_grad_(True), u.clone().requires_grad_(True)
    got = grouper.inverse_std(a, index)
    want = _inverse_std(grouper._differences(b, index), index.mask)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert got[2] == want[2] == 1.0 / (torch.zeros((), dtype=torch.float64) + 1e-5)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-15)
    assert torch.equal(a.grad[2], torch.zeros_like(a.grad[2]))


def test_inverse_std_in_bfloat16_is_the_float32_value_rounded():
    """Under bfloat16 inputs the statistic is computed in float32 (the bf16 differences lose digits) and returned
    in bfloat16."""
    g = torch.Generator().manual_seed(1)
    grouper = LocalGrouper(16, k=8, reducer=2, coord_dim=3)
    xyz = torch.rand(3, 64, 3, generator=g)
    index = grouper.index(xyz)
    u = (torch.randn(3, 64, 16, generator=g) + 4).bfloat16()
    got = grouper.inverse_std(u, index)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, grouper.inverse_std(u.float(), index).bfloat16())


def test_residual_block_gradient_and_shape():
    block = ResidualPointBlock(8, res_expansion=0.25)
    assert block.net1.linear.out_features == 2
    x = torch.randn(4, 6, 8, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape and (out >= 0).all()
    out.sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    with pytest.raises(ValueError, match="res_expansion"):
        ResidualPointBlock(2, res_expansion=0.25)


@pytest.mark.parametrize("ragged", [False, True])
def test_a_cloud_with_every_point_at_one_position_trains_with_finite_gradients(ragged):
    """A broken scan (all points equal) has zero spread in the grouper's normalisation: the sqrt's derivative at 0
    gave NaN gradients through torch.std. Now every gradient is finite, and the other sets' gradients of the
    normalisation scale are those of torch.std (float64)."""
    from pointcoc.layers.grouper import _inverse_std

    g = torch.Generator().manual_seed(0)
    diff = torch.randn(3, 16, 8, 5, generator=g, dtype=torch.float64)
    diff[1] = 0.0  # the broken cloud's differences to its anchors are all zero
    mask = None
    if ragged:
        mask = torch.ones(3, 16, 8, dtype=torch.bool)
        mask[2, 10:] = False
    weights = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    x = diff.clone().requires_grad_(True)
    (_inverse_std(x, mask) * weights).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))
    for b in (0, 2):  # the reference: 1 / (torch.std + 1e-5) over the real entries of set b alone
        y = diff[b].clone().requires_grad_(True)
        real = y if mask is None else y[mask[b]]
        (weights[b] / (torch.std(real.reshape(-1)) + 1e-5)).backward()
        torch.testing.assert_close(x.grad[b], y.grad, rtol=1e-12, atol=1e-15)


def test_pointmlp_elite_trains_on_a_batch_holding_a_degenerate_cloud():
    import pointcoc

    torch.manual_seed(0)
    model = pointcoc.create_model("pointmlp_elite", num_classes=5).double().train()
    xyz = torch.rand(4, 64, 3, dtype=torch.float64) * 2 - 1
    xyz[2] = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)  # every point of set 2 at one position
    torch.nn.functional.cross_entropy(model(xyz), torch.tensor([0, 1, 2, 3])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
