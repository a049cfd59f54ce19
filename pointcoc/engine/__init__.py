"""Training / evaluation engine shared by the training scripts.

Public API::

    add_training_args(parser)            # shared CLI flags
    config = config_from_args(args)      # -> TrainConfig (dataclass, saved as JSON and in checkpoints)
    fit(model, train_ds, test_ds, config, output_dir, class_names, collate_fn=None, val_dataset=None, resume=None)
    evaluate(model, loader, num_classes, device="cpu", votes=1, ...)
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig, add_training_args, config_from_args
from .loop import (SeededItems, build_model_from_checkpoint, collate_point_dicts, evaluate, fit, item_seed,
                   random_scale_votes, resolve_device, seed_everything, smoothed_cross_entropy, stratified_split)
from .metrics import confusion_matrix, plot_confusion_matrix, summarize_confusion

__all__ = [
    "TrainConfig", "add_training_args", "config_from_args", "fit", "evaluate", "collate_point_dicts",
    "smoothed_cross_entropy", "resolve_device", "seed_everything", "stratified_split",
    "build_model_from_checkpoint", "random_scale_votes", "CheckpointError", "load_checkpoint",
    "save_checkpoint", "confusion_matrix", "summarize_confusion", "plot_confusion_matrix", "SeededItems",
    "item_seed",
]
