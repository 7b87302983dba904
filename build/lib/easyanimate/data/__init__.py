"""Training data: metadata formats, frame sampling, clip transforms and aspect-ratio buckets."""

from easyanimate.data.buckets import (
    ASPECT_RATIO_512,
    AspectRatioBatchSampler,
    bucket_size,
    closest_ratio,
    scaled_ratio_table,
)
from easyanimate.data.datasets import (
    DATA_FORMATS,
    DataEntry,
    VideoImageDataset,
    collate_clips,
    load_entries,
)
from easyanimate.data.sampling import TooShortError, clip_span, sample_frame_indices
from easyanimate.data.transforms import prepare_clip

__all__ = [
    "ASPECT_RATIO_512",
    "AspectRatioBatchSampler",
    "DATA_FORMATS",
    "DataEntry",
    "TooShortError",
    "VideoImageDataset",
    "bucket_size",
    "clip_span",
    "closest_ratio",
    "collate_clips",
    "load_entries",
    "prepare_clip",
    "sample_frame_indices",
    "scaled_ratio_table",
]
