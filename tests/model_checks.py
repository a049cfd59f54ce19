"""Assertions shared by the model tests."""
import torch


def assert_padding_never_influences_training(model, xyz, features, lengths):
    """Train-mode logits and parameter gradients are the same whatever the padding entries hold.

    xyz (B, N, D), features (B, N, C) or None, lengths (B,); dropout masks are fixed by reseeding.
    """
    results = []
    for fill in (0.0, 3.0):
        x, f = xyz.clone(), None if features is None else features.clone()
        for b in range(xyz.shape[0]):
            x[b, lengths[b]:] = fill
            if f is not None:
                f[b, lengths[b]:] = -fill
        torch.manual_seed(0)
        model.zero_grad()
        logits = model(x, f, lengths)
        logits.square().sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1)
