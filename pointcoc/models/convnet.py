"""ConvNet baseline for pixel sets: rasterise the set back into an image, then a small CNN.

The model has the same call signature as every pointcoc model,
``model(xyz (B, N, D), features (B, N, C) or None, lengths (B,) or None) -> logits``,
so the same engine, data and collate serve it and the point-set models.

Rasterisation inverts the pixel convention of ``pointcoc.data.pixels``: a pixel
in column ``i`` and row ``j`` of an ``h x w`` image sits at
``x = i / w - 0.5``, ``y = j / h - 0.5``. A third coordinate (depth) is ignored
for placement; the features go into the channels; pixels that are not in the
set stay zero ("missing pixels filled with zeros", by construction).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..ops.validation import check_lengths, check_points, check_positive_int
from .classifier import PointSetClassifier, StageFeatures
from .registry import register_model

__all__ = ["ConvNetPixels", "pixel_cells", "rasterize_pixel_sets", "convnet_pixels_small", "convnet_pixels"]

# how far (in pixels) a coordinate may sit from its grid position: float32 rounding only
GRID_TOLERANCE = 1e-3


def pixel_cells(xyz: torch.Tensor, image_size: Tuple[int, int], lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Row-major cell ``j * w + i`` of every pixel of a batch of pixel sets.

    Args:
        xyz: (B, N, D) with D in {2, 3}; ``xyz[..., 0] = i / w - 0.5`` (column i),
            ``xyz[..., 1] = j / h - 0.5`` (row j); ``xyz[..., 2]`` (depth) is ignored.
        image_size: (h, w) of the grid.
        lengths: (B,) long with values in [1, N], or None (every set has N points).

    Returns:
        (B, N) long cell index in [0, h * w), -1 on padding.

    Raises ValueError when a real point does not fall on the grid (more than
    ``GRID_TOLERANCE`` pixels from a cell, or outside the image) or when two
    points of one set fall on the same cell.
    """
    h, w = image_size
    check_points("xyz", xyz, dims=(2, 3))
    batch, n, _ = xyz.shape
    lengths = check_lengths("lengths", lengths, batch, n, device=xyz.device)
    valid = torch.arange(n, device=xyz.device)[None, :] < lengths[:, None]
    col = (xyz[..., 0].double() + 0.5) * w
    row = (xyz[..., 1].double() + 0.5) * h
    i, j = col.round(), row.round()
    off_grid = ((col - i).abs() > GRID_TOLERANCE) | ((row - j).abs() > GRID_TOLERANCE)
    outside = (i < 0) | (i >= w) | (j < 0) | (j >= h)
    bad = (off_grid | outside) & valid
    cell = torch.where(valid, (j * w + i).long(), -1)  # padding: no cell
    if torch.compiler.is_exporting():  # no value checks in the graph: the op pixel_grid_check_op runs them
        return cell
    if bool(bad.any()):
        b, p = (int(t) for t in torch.nonzero(bad)[0])
        x, y = xyz[b, p, 0].item(), xyz[b, p, 1].item()
        raise ValueError(f"xyz must hold pixel coordinates (i / {w} - 0.5, j / {h} - 0.5) of a {h}x{w} image "
                         f"(image_size={tuple(image_size)}); point {p} of set {b} is at ({x:.6g}, {y:.6g}), "
                         f"i.e. column {col[b, p].item():.4g}, row {row[b, p].item():.4g}")
    ordered, _ = cell.sort(dim=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if bool(repeated.any()):
        b = int(torch.nonzero(repeated)[0, 0])
        raise ValueError(f"xyz must hold each pixel at most once per set; set {b} has two points on one pixel")
    return cell


@torch.library.custom_op("pointcoc::check_pixel_grid", mutates_args=())
def pixel_grid_check_op(xyz: torch.Tensor, features: torch.Tensor, lengths: Optional[torch.Tensor], height: int,
                        width: int) -> torch.Tensor:
    """The value checks of :class:`ConvNetPixels`'s input (finite values, lengths in range, every point on the
    grid, no pixel twice) as one op of a ``torch.export`` program: xyz (B, N, D), features (B, N, C),
    lengths (B,) or None -> a copy of xyz (used downstream, so never dropped); raises as eager mode."""
    check_points("xyz", xyz, dims=(2, 3))
    check_points("features", features, dims=None)
    pixel_cells(xyz, (height, width), lengths)
    return xyz.clone()


@pixel_grid_check_op.register_fake
def _pixel_grid_check_fake(xyz, features, lengths, height, width):
    return torch.empty_like(xyz)


def rasterize_pixel_sets(xyz: torch.Tensor, features: torch.Tensor, image_size: Tuple[int, int],
                         lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Place every pixel of a batch of pixel sets on its grid cell.

    Args:
        xyz: (B, N, D) with D in {2, 3}; ``xyz[..., 0] = i / w - 0.5`` (column i),
            ``xyz[..., 1] = j / h - 0.5`` (row j); ``xyz[..., 2]`` (depth) is ignored.
        features: (B, N, C) values of each pixel.
        image_size: (h, w) of the grid.
        lengths: (B,) long with values in [1, N]; entries at index >= lengths[b]
            are padding and are not placed. None: every set has N points.

    Returns:
        (B, C, h, w) image, zero where a pixel is not in the set.

    Raises ValueError as :func:`pixel_cells`.
    """
    h, w = image_size
    check_points("xyz", xyz, dims=(2, 3))
    check_points("features", features, dims=None)
    batch, n, _ = xyz.shape
    if features.shape[:2] != (batch, n):
        raise ValueError(f"features must have shape (B, N, C) = ({batch}, {n}, C) as xyz; "
                         f"got {tuple(features.shape)}")
    cell = pixel_cells(xyz, image_size, lengths)
    valid = cell >= 0
    channels = features.shape[-1]
    flat = features.new_zeros(batch, h * w + 1, channels)  # last row: a bin for padding, dropped below
    index = torch.where(valid, cell, h * w)
    flat = flat.scatter(1, index[..., None].expand(-1, -1, channels), features * valid[..., None].to(features.dtype))
    return flat[:, : h * w].transpose(1, 2).reshape(batch, channels, h, w)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvNetPixels(PointSetClassifier):
    """Small CNN on rasterised pixel sets (the "missing pixels filled with zeros" baseline).

    Per stage: two 3x3 conv-BN-ReLU layers, then 2x2 max-pooling (except after
    the last stage); then global average pooling and a classifier
    (Linear-BN-ReLU-Dropout per hidden width, then Linear).

    Args:
        num_classes: classifier outputs.
        in_channels: C, feature channels per pixel (1 grey, 3 RGB, 4 RGB + depth).
        coord_dim: D of ``xyz``, 2 or 3 (the third coordinate is ignored).
        image_size: (h, w) of the grid the pixel coordinates come from.
        widths: channels of each stage.
        classifier_dims, dropout: hidden widths of the head and its dropout.

    Forward: ``model(xyz (B, N, D), features (B, N, C), lengths (B,) long or None)
    -> logits (B, num_classes)``. The result does not depend on the order of the
    points, and padding never influences it.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, coord_dim: int = 2,
                 image_size: Sequence[int] = (8, 8), widths: Sequence[int] = (32, 64),
                 classifier_dims: Sequence[int] = (128,), dropout: float = 0.5):
        super().__init__()
        if coord_dim not in (2, 3):
            raise ValueError(f"coord_dim must be 2 or 3; got {coord_dim!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1 (the ConvNet needs pixel values); got {in_channels!r}")
        image_size = tuple(image_size)
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width); got {image_size!r}")
        self.image_size = tuple(check_positive_int("image_size", s) for s in image_size)
        widths = [check_positive_int("widths", c) for c in widths]
        if not widths:
            raise ValueError("widths must name at least one stage; got []")
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.in_channels, self.coord_dim = in_channels, coord_dim
        self.min_points = 1
        layers, cin = [], in_channels
        for s, cout in enumerate(widths):
            layers += [_conv_bn_relu(cin, cout), _conv_bn_relu(cout, cout)]
            if s < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.num_features = cin
        # body[self._stage_ends[s]] is the last layer of stage s (before its pooling)
        self._stage_ends = [i for i, layer in enumerate(layers)
                            if i + 1 == len(layers) or isinstance(layers[i + 1], nn.MaxPool2d)]
        self.feature_info = [dict(num_chs=c, reduction=2 ** s, module=f"body.{i}")
                             for s, (c, i) in enumerate(zip(widths, self._stage_ends))]
        head = []
        for width in classifier_dims:
            head += [nn.Linear(cin, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            cin = width
        head.append(nn.Linear(cin, self.num_classes))
        self.classifier = nn.Sequential(*head)

    def rasterize(self, xyz: torch.Tensor, features: Optional[torch.Tensor],
                  lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, N, D), (B, N, C), (B,) or None -> (B, C, h, w) image with zeros where pixels are missing."""
        check_points("xyz", xyz, dims=(self.coord_dim,))
        if features is None:
            raise ValueError(f"features (B, N, {self.in_channels}) are required by the ConvNet; got None")
        check_points("features", features, dims=(self.in_channels,))
        weight = self.body[0][0].weight
        if features.device != weight.device:
            raise ValueError(f"features must be on {weight.device} like the model's parameters; got {features.device}")
        if torch.compiler.is_exporting():
            xyz = pixel_grid_check_op(xyz, features, lengths, *self.image_size)
        return rasterize_pixel_sets(xyz, features.to(weight.dtype), self.image_size, lengths)

    def forward_features(self, xyz: torch.Tensor, features: Optional[torch.Tensor] = None,
                         lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """xyz (B, N, D), features (B, N, C), lengths (B,) or None -> pooled embedding (B, num_features)."""
        return self.body(self.rasterize(xyz, features, lengths)).mean(dim=(2, 3))

    def cell_positions(self, stage: int) -> torch.Tensor:
        """(h_s * w_s, coord_dim) position of each cell of stage ``stage``'s grid, row-major: the mean of the
        pixel coordinates ``(i / w - 0.5, j / h - 0.5)`` of the pixels it pools (2^s x 2^s, fewer at a ceil-mode
        edge); a third coordinate is 0 (the ConvNet ignores depth)."""
        h, w = self.image_size
        r = 2 ** stage
        weight = self.body[0][0].weight

        def axis(size):
            lo = torch.arange(0, size, r, dtype=torch.float64)
            hi = torch.clamp(lo + r, max=size) - 1
            return (lo + hi) / 2 / size - 0.5

        rows, cols = axis(h), axis(w)
        pos = torch.zeros(rows.numel(), cols.numel(), self.coord_dim, dtype=torch.float64)
        pos[..., 0], pos[..., 1] = cols[None, :], rows[:, None]
        return pos.reshape(-1, self.coord_dim).to(weight.device, weight.dtype)

    def _intermediates(self, xyz, features, lengths, last):
        """Intermediate s is the feature map of stage s (after its second conv, before pooling) as a set of
        its h_s * w_s cells, row-major: xyz (B, h_s * w_s, D) from :meth:`cell_positions`, features
        (B, h_s * w_s, widths[s]) (``features.transpose(1, 2).reshape(B, C, h_s, w_s)`` is the map), lengths
        None (every cell is present; cells without pixels hold what the zeros of missing pixels give)."""
        h = self.rasterize(xyz, features, lengths)
        kept, start = [], 0
        for s in range(last + 1):
            end = self._stage_ends[s] + 1
            for layer in self.body[start:end]:
                h = layer(h)
            start = end
            cells = h.flatten(2).transpose(1, 2)
            kept.append(StageFeatures(self.cell_positions(s).expand(h.shape[0], -1, -1), cells, None))
        return kept, h.mean(dim=(2, 3))


@register_model
def convnet_pixels_small(**kwargs) -> ConvNetPixels:
    """ConvNet baseline for 8x8 pixel sets (digits): stages of 32 and 64 channels."""
    return ConvNetPixels(**{"image_size": (8, 8), "widths": (32, 64), **kwargs})


@register_model
def convnet_pixels(**kwargs) -> ConvNetPixels:
    """ConvNet baseline for 28x28 pixel sets (MNIST): stages of 32, 64 and 128 channels."""
    return ConvNetPixels(**{"image_size": (28, 28), "widths": (32, 64, 128), **kwargs})
