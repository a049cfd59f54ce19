"""Data sets, augmentation and collation."""
from .augment import PointCloudAugment, random_scale_translate, shuffle_points
from .h5sets import (DataFormatError, DatasetNotFoundError, PointCloudDataset, build_point_datasets,
                     load_modelnet40, load_modelnet40_mini, load_scanobjectnn, read_h5_split)
