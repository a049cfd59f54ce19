"""Figures say what they show: the cluster maps' titles stay clear of the row above and name stages, not module
paths; a confusion matrix marks the classes its split holds no sample of (issue 27 item 8)."""
import numpy as np
import pytest
import torch

from pointcoc.engine.metrics import ABSENT_CLASS_TEXT, confusion_figure
from pointcoc.viz.clusters import STAGES_NOTE, ClusterMap, cluster_maps_figure, layer_labels

LAYERS = ("stages.0.pos_blocks.0", "stages.1.pos_blocks.0")


def _row(layers=LAYERS, side=8):
    """(image, one ClusterMap per layer, two-line title) of a fake side x side image."""
    labels = torch.arange(side * side).view(side, side) % 4
    maps = [ClusterMap(name, labels, torch.tensor([[1.0, 2.0]]), torch.tensor([0]), side * side) for name in layers]
    return torch.rand(1, side, side), maps, "digits test #0 (true 3)\npredicted 3, 64 pixels"


@pytest.mark.parametrize("rows", [2, 3])
def test_cluster_map_titles_stay_clear_of_the_row_above(rows):
    fig = cluster_maps_figure([_row() for _ in range(rows)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = np.array(fig.axes[: rows * 3]).reshape(rows, 3)
    for r in range(1, rows):
        for c in range(3):
            title = panels[r, c].title.get_window_extent(renderer)
            above = panels[r - 1, c].get_window_extent(renderer)
            assert title.y1 < above.y0, (r, c, panels[r, c].get_title())


def test_cluster_map_panels_are_titled_by_stage_and_the_figure_says_what_a_stage_is():
    fig = cluster_maps_figure([_row()])
    assert [ax.get_title().splitlines()[0] for ax in fig.axes[1:3]] == ["stage 1", "stage 2"]
    assert not any("stages." in ax.get_title() for ax in fig.axes)
    assert STAGES_NOTE in [text.get_text() for ax in fig.axes for text in ax.texts]


def test_layer_labels_number_blocks_only_where_a_stage_clusters_twice():
    assert layer_labels(["stages.0.pos_blocks.0", "stages.0.pos_blocks.1", "stages.1.pos_blocks.0", "head"]) == \
        ["stage 1, block 1", "stage 1, block 2", "stage 2", "head"]


def _texts(fig):
    return [text.get_text() for ax in fig.axes for text in ax.texts]


def test_a_confusion_matrix_says_which_classes_its_split_lacks():
    cm = torch.tensor([[5, 1, 0], [0, 0, 0], [1, 0, 3]])
    fig = confusion_figure(cm, ["a", "b", "c"])
    assert _texts(fig).count(ABSENT_CLASS_TEXT) == 1
    (ax,) = [ax for ax in fig.axes if ABSENT_CLASS_TEXT in [t.get_text() for t in ax.texts]]
    (note,) = [t for t in ax.texts if t.get_text() == ABSENT_CLASS_TEXT]
    assert note.get_position()[1] == 1  # across the row of class b
    assert ABSENT_CLASS_TEXT not in _texts(confusion_figure(torch.tensor([[2, 0], [1, 1]])))
