#!/usr/bin/env python
"""How far float32 logits are from float64 ones, pointcoc against the published layout (same parameters, same input).

    python benchmarks/float32_error.py --model pointmlp_elite --batch 8

Training-mode forward (batch statistics), FPS from index 0, 1024 points uniform in [-1, 1). Prints the largest
absolute logit error of each layout's float32 run against pointcoc's float64 run, then the same for one
BatchNorm layer in training mode on post-ReLU-like features (mean 3, std 0.5) laid out as pointcoc's flat
(M, C) rows and as the published (B, C, L): the layout of BatchNorm's input is what separates the two.
"""
import argparse
import copy
import sys

import torch


def logit_errors(name: str, batch: int, n_points: int = 1024):
    """{layout: max |float32 logits - float64 logits|} for pointcoc and the published layout."""
    from pointcoc.bench.model_rows import reference_pair

    ours, reference, xyz, _ = reference_pair(name, batch, n_points, 15, "cpu")

    def logits(model, dtype, transposed):
        model = copy.deepcopy(model).to(dtype).train()
        x = xyz.to(dtype)
        torch.manual_seed(1)  # the same dropout masks in the head
        return model(x.transpose(1, 2).contiguous() if transposed else x).double()

    truth = logits(ours, torch.float64, False)
    return {"pointcoc": (logits(ours, torch.float32, False) - truth).abs().max().item(),
            "published layout": (logits(reference, torch.float32, True) - truth).abs().max().item()}


def batch_norm_errors(rows: int = 98304, channels: int = 128, groups: int = 8):
    """{layout: max |float32 - float64|} of one training-mode BatchNorm on the same values in two layouts."""
    torch.manual_seed(0)
    x64 = (torch.randn(rows, channels, dtype=torch.float64) * 0.5 + 3.0).relu()

    def bn(t):
        return torch.nn.functional.batch_norm(t, None, None, training=True)

    truth = bn(x64)
    flat = bn(x64.float()).double()
    bcl = x64.float().view(groups, rows // groups, channels).transpose(1, 2).contiguous()
    published = bn(bcl).transpose(1, 2).reshape(rows, channels).double()
    return {"flat (M, C) rows": (flat - truth).abs().max().item(),
            "(B, C, L)": (published - truth).abs().max().item()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pointmlp_elite")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    for layout, err in logit_errors(args.model, args.batch).items():
        print(f"{args.model} B={args.batch} {layout:17s} max |float32 - float64| logits {err:.2e}")
    for layout, err in batch_norm_errors().items():
        print(f"BatchNorm (98304, 128) {layout:17s} max |float32 - float64| {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
