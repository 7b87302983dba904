"""Aspect-ratio buckets and the batch sampler that keeps every batch one size.

``ASPECT_RATIO_512`` is EasyAnimate v1's table: 40 ratios ``height / width`` (the key, rounded to 2 decimals),
each with a ``(height, width)`` of about 512×512 pixels, from 0.25 -> (256, 1024) to 4.0 -> (1024, 256); every
size is a multiple of 32. A source of ``height × width`` pixels goes to the key nearest to ``height / width``
(absolute difference of the ratios, the smaller key on a tie), as in v1; at ``sample_size`` 512 table and
assignment are v1's exactly.

Training at another ``sample_size`` scales the sizes by ``sample_size / 512`` and rounds each side down to a
multiple of ``multiple`` pixels. The default, 16, is v1's rounding and what any patch-2 model on 8× latents
needs. The grid motion module needs more: its ``block_size × block_size`` neighbourhoods of patch-2 tokens on
8× latents span ``2 × block_size × 8`` pixels (32 for the released 2×2 grid), so training passes the model's
pixel multiple (``Transformer3DModel.spatial_multiple`` × 8) and gets multiples of 32 for the released model.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Protocol

from torch.utils.data import Sampler

DEFAULT_SIZE_MULTIPLE = 16
"""Bucket sides are multiples of this many pixels unless the model needs more (v1's rounding: patch 2, 8× VAE)."""

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
    2.0: (704, 352), 2.09: (736, 352),
    2.4: (768, 320), 2.5: (800, 320),
    2.89: (832, 288), 3.0: (864, 288), 3.11: (896, 288),
    3.62: (928, 256), 3.75: (960, 256), 3.88: (992, 256), 4.0: (1024, 256),
}
"""v1's buckets at 512: ``height / width`` rounded to 2 decimals -> ``(height, width)``, keys ascending."""

BucketKey = tuple[str, tuple[int, int]]
"""``(data_type, (height, width))``: items with equal keys give clips of equal shape."""

ClipRequest = tuple[int, tuple[int, int]]
"""``(index, (height, width))``: what ``AspectRatioBatchSampler`` asks a dataset for."""


def closest_ratio(height: int, width: int, ratios: dict[float, tuple[int, int]] = ASPECT_RATIO_512) -> float:
    """The key of ``ratios`` nearest to ``height / width`` (absolute difference; the first key on a tie), as in v1."""
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive; got {height}x{width}")
    return min(ratios, key=lambda ratio: abs(ratio - height / width))


def floor_to_multiple(value: float, multiple: int = DEFAULT_SIZE_MULTIPLE) -> int:
    """``value`` rounded down to a multiple of ``multiple``, at least ``multiple``."""
    return max(multiple, int(value / multiple) * multiple)


def scaled_ratio_table(sample_size: int, multiple: int = DEFAULT_SIZE_MULTIPLE,
                       ratios: dict[float, tuple[int, int]] = ASPECT_RATIO_512) -> dict[float, tuple[int, int]]:
    """``ratios`` with sizes scaled by ``sample_size / 512``, each side rounded down to a multiple of ``multiple``."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1; got {multiple}")
    scale = sample_size / 512
    return {ratio: (floor_to_multiple(h * scale, multiple), floor_to_multiple(w * scale, multiple))
            for ratio, (h, w) in ratios.items()}


def bucket_size(height: int, width: int, sample_size: int, multiple: int = DEFAULT_SIZE_MULTIPLE) -> tuple[int, int]:
    """The ``(height, width)`` training size for a ``height × width`` source when training at ``sample_size``.

    ``multiple``: the pixel multiple the model needs (16 for patch 2 on 8× latents, 32 for the released grid
    motion module). The ratio is matched in the unscaled table, as v1 matches its keys.
    """
    return scaled_ratio_table(sample_size, multiple)[closest_ratio(height, width)]


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

    def __init__(self, sampler: Iterable[int], dataset: BucketedDataset, batch_size: int,
                 drop_last: bool = False) -> None:
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
