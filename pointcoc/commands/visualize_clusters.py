"""Clustering maps of a trained pixel-set CoC model: one row per image, one panel per context-cluster layer.

    pointcoc visualize-clusters runs/pixels/last.pt digits:0 digits:12 --output clusters.png
    pointcoc visualize-clusters runs/mnist/last.pt my_digit.png --invert

IMAGE is an image file (read with PIL, resized to the model's image size, grey or RGB as the model
expects) or DATASET:INDEX, a test image of a pixel data set (for the checkpoint's data set exactly the
evaluated pixel set). Each pixel is coloured by its cluster; in later stages, which cluster FPS-subsampled
anchors, a pixel takes the cluster of its nearest anchor (pointcoc/viz/clusters.py). Centers: white stars;
pixels not in the set: light grey in the maps, pale red in the input (a legend under the panels says so).
Exit code 2 (and a message) when the checkpoint, an image or an argument is wrong; 130 on Ctrl-C.
"""
import argparse

from pointcoc.commands.pixel_input import load_pixel_input
from pointcoc.engine import build_model_from_checkpoint, load_checkpoint
from pointcoc.engine.cli import check_output_file, run_cli
from pointcoc.engine.threads import add_threads_arg, torch_threads
from pointcoc.viz import cluster_maps, plot_cluster_maps


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="last.pt / best.pt of `pointcoc train-pixels` (a pointmlp_coc_pixels* model)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file or DATASET:INDEX (e.g. digits:12)")
    p.add_argument("--output", default="clusters.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--invert", action="store_true", help="use 1 - value for image files (dark ink on white paper)")
    p.add_argument("--mask-seed", type=int, default=0,
                   help="seed of the pixel mask of image files when the model's format drops pixels "
                        "(default: %(default)s)")
    add_threads_arg(p, default=1)
    return p


def draw(args: argparse.Namespace) -> int:
    with torch_threads(args.threads):
        return _draw(args)


def _draw(args: argparse.Namespace) -> int:
    check_output_file(args.output, "--output")
    state = load_checkpoint(args.checkpoint)
    model = build_model_from_checkpoint(state)
    config = state["config"]
    names = state.get("class_names") or [str(i) for i in range(model.num_classes)]
    rows = []
    for spec in args.images:
        item = load_pixel_input(spec, config, invert=args.invert, mask_seed=args.mask_seed)
        maps, logits = cluster_maps(model, item.xyz, item.features, tuple(item.image.shape[1:]))
        title = f"{item.title}\npredicted {names[int(logits.argmax())]}, {len(item.xyz)} pixels"
        rows.append((item.image, maps, title))
    path = plot_cluster_maps(rows, args.output)
    print(f"wrote {path}")
    return 0


def main(argv=None, prog=None) -> int:
    """Exit code 0 on success, 2 on a bad checkpoint, image or argument, 130 on Ctrl-C."""
    return run_cli(draw, build_parser(prog), argv)
