"""Aspect-ratio buckets and the batch sampler that keeps every batch one size.

``ASPECT_RATIO_512`` maps a ratio ``height / width`` (rounded to 2 decimals) to a ``(height, width)`` of about
512×512 pixels. Every size is a multiple of 32 because the transformer patchifies the VAE latent (1/8 of the
pixels) in 2×2 patches — the v1 model's grid attention fails for other sizes. Training at another
``sample_size`` scales the table by ``sample_size / 512`` and rounds back to multiples of 32.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Protocol

from torch.utils.data import Sampler

SIZE_MULTIPLE = 32

# The rule behind the table: every (height, width) with both sides multiples of 32 in [256, 1024] and an
# area between 0.9 and 1.0 times 512². That gives 41 sizes, symmetric under height <-> width, running from
# 0.25 -> (256, 1024) to 4.0 -> (1024, 256). (The original's PixArt-derived table lists 40 ratios between
# the same end points; this one is regenerated from the rule above, which tests/test_data.py checks.)
ASPECT_RATIO_512: dict[float, tuple[int, int]] = {
    0.25: (256, 1024), 0.26: (256, 992), 0.27: (256, 960), 0.28: (256, 928),
    0.32: (288, 896), 0.33: (288, 864), 0.35: (288, 832),
    0.4: (320, 800), 0.42: (320, 768),
    0.48: (352, 736), 0.5: (352, 704), 0.52: (352, 672),
    0.57: (384, 672), 0.6: (384, 640),
    0.68: (416, 608), 0.72: (416, 576),
    0.78: (448, 576), 0.82: (448, 544),
    0.88: (480, 544), 0.94: (480, 512),
    1.0: (512, 512),
    1.07: (512, 480), 1.13: (544, 480),
    1.21: (544, 448), 1.29: (576, 448),
    1.38: (576, 416), 1.46: (608, 416),
    1.67: (640, 384), 1.75: (672, 384),
    1.91: (672, 352), 2.0: (704, 352), 2.09: (736, 352),
    2.4: (768, 320), 2.5: (800, 320),
    2.89: (832, 288), 3.0: (864, 288), 3.11: (896, 288),
    3.62: (928, 256), 3.75: (960, 256), 3.88: (992, 256), 4.0: (1024, 256),
}

BucketKey = tuple[str, tuple[int, int]]
"""``(data_type, (height, width))``: items with equal keys give clips of equal shape."""

ClipRequest = tuple[int, tuple[int, int]]
"""``(index, (height, width))``: what ``AspectRatioBatchSampler`` asks a dataset for."""


def closest_ratio(height: int, width: int, ratios: dict[float, tuple[int, int]] = ASPECT_RATIO_512) -> float:
    """The key of ``ratios`` nearest to ``height / width``, measured in log-ratio (so 2:1 and 1:2 are treated alike)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive; got {height}x{width}")
    target = math.log(height / width)
    return min(ratios, key=lambda ratio: abs(math.log(ratios[ratio][0] / ratios[ratio][1]) - target))


def round_to_multiple(value: float, multiple: int = SIZE_MULTIPLE) -> int:
    """``value`` rounded (halves up) to the nearest positive multiple of ``multiple``."""
    return max(multiple, int(value / multiple + 0.5) * multiple)


def scaled_ratio_table(sample_size: int, ratios: dict[float, tuple[int, int]] = ASPECT_RATIO_512) -> dict[float, tuple[int, int]]:
    """``ratios`` with sizes scaled by ``sample_size / 512`` and rounded to multiples of 32."""
    scale = sample_size / 512
    return {ratio: (round_to_multiple(h * scale), round_to_multiple(w * scale)) for ratio, (h, w) in ratios.items()}


def bucket_size(height: int, width: int, sample_size: int) -> tuple[int, int]:
    """The ``(height, width)`` training size for a ``height × width`` source when training at ``sample_size``.

    The ratio is matched in the unscaled table (rounding scaled sizes can distort their ratios).
    """
    return scaled_ratio_table(sample_size)[closest_ratio(height, width)]


class BucketedDataset(Protocol):
    """What ``AspectRatioBatchSampler`` needs from a dataset."""

    def __len__(self) -> int: ...

    def bucket_key(self, index: int) -> BucketKey | None:
        """The item's bucket, or None when the item is unusable (the dataset records why)."""


class AspectRatioBatchSampler(Sampler[list[ClipRequest]]):
    """Group the indices of a base sampler into batches whose clips share data type and size.

    Each index goes into the bucket ``dataset.bucket_key(index)`` (image vs video, and the aspect-ratio
    bucket when the dataset buckets); a bucket is yielded as soon as it holds ``batch_size`` indices, as
    ``[(index, (height, width)), ...]`` so that the dataset, if it has to replace an unreadable item, makes
    the replacement the same size. Unusable items (key None) are left out. At the end of an epoch the
    partly filled buckets are yielded too, unless ``drop_last``.

    Use it as ``DataLoader(dataset, batch_sampler=AspectRatioBatchSampler(RandomSampler(dataset, generator=g),
    dataset, batch_size))``; it runs in the main process, so items it finds unusable are counted exactly in
    ``dataset.summary()``.
    """

    def __init__(self, sampler: Iterable[int], dataset: BucketedDataset, batch_size: int, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.sampler = sampler
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[ClipRequest]]:
        buckets: dict[BucketKey, list[int]] = {}
        for index in self.sampler:
            key = self.dataset.bucket_key(index)
            if key is None:
                continue
            bucket = buckets.setdefault(key, [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield [(i, key[1]) for i in bucket]
                bucket.clear()
        if not self.drop_last:
            for key, bucket in buckets.items():
                if bucket:
                    yield [(i, key[1]) for i in bucket]

    def __len__(self) -> int:
        """Batches per epoch, exact when the base sampler visits every dataset index once (Random/SequentialSampler).

        The first call looks up the bucket of every item (a header probe per file when bucketing).
        """
        counts = Counter(key for key in map(self.dataset.bucket_key, range(len(self.dataset))) if key is not None)
        if self.drop_last:
            return sum(count // self.batch_size for count in counts.values())
        return sum(math.ceil(count / self.batch_size) for count in counts.values())
