"""Data sets, augmentation and collation."""
from .augment import PointCloudAugment, random_scale_translate, shuffle_points
from .h5sets import (DataFormatError, DatasetNotFoundError, PointCloudDataset, build_point_datasets,
                     find_modelnet40, load_modelnet10, load_modelnet40, load_scanobjectnn, read_h5_split)
from .image_datasets import (IMAGE_DATASETS, RGBD_FRAMES, ImageSplits, load_image_dataset, load_rgbd_frame,
                             render_depth_views)
from .pixels import (PIXEL_FORMATS, PixelSet, PixelSetDataset, collate_pixel_sets, image_to_point_set, keep_mask,
                     kept_pixel_count)
