"""Training data: metadata formats and one robust video/image dataset.

Metadata formats (``DATA_FORMATS``, chosen by ``--train_data_format``):

* ``webvid``: a csv with columns ``videoid`` and ``name`` (the caption; ``page_dir`` is ignored); the video
  is ``<data_dir>/<videoid>.mp4`` (``data_dir`` defaults to the csv's folder).
* ``normal``: a JSON list (or a csv) of ``{"file_path", "text", "type"}``; ``file_path`` is relative to
  ``data_dir`` (default: the metadata file's folder) or absolute; ``type`` (or ``data_type``) is
  ``"video"``/``"image"``, inferred from the file extension when absent (unknown extensions: video).
* ``diffusers``: an image folder with ``metadata.jsonl`` files whose lines are ``{"file_name", "text"}``;
  ``file_name`` is relative to the ``metadata.jsonl`` it is listed in (HF ``imagefolder`` convention,
  read directly without the ``datasets`` package).

``VideoImageDataset`` returns ``{"pixel_values": (F, 3, H, W) float in [-1, 1], "text": str,
"data_type": "video" | "image"}``; images are 1-frame clips.

Robustness (the original retried a corrupt item forever and could stop a run mid-epoch):

* at construction, entries whose file is missing are dropped and counted; ``validate_all=True`` also
  probes every file's header (frame count, size) so corrupt and too-short files are dropped up front;
* at read time an unusable item is replaced by the next usable one of the same data type (deterministic,
  at most ``max_read_attempts`` reads, then a ``RuntimeError``); each failure is counted once per entry by
  reason (``missing``, ``corrupt``, ``too_short``) and its path logged once;
* ``summary()`` gives the counts. With ``DataLoader(num_workers > 0)`` the reads happen in worker
  processes whose counters never reach the main process: the main-process summary then covers construction
  (and the bucket sampler's probes) only. Use ``validate_all=True`` when the report must be exact.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from easyanimate.data.buckets import DEFAULT_SIZE_MULTIPLE, BucketKey, ClipRequest, bucket_size
from easyanimate.data.sampling import TooShortError, sample_frame_indices
from easyanimate.data.transforms import prepare_clip
from easyanimate.video_io import (
    IMAGE_EXTENSIONS,
    VideoReadError,
    probe_image,
    probe_video,
    read_image,
    read_video_frames,
)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
DATA_TYPES = ("video", "image")
SKIP_REASONS = ("missing", "corrupt", "too_short")


@dataclass(frozen=True)
class DataEntry:
    """One item listed in the metadata: a file, its caption, and whether it is a video or an image."""

    path: Path
    text: str
    data_type: str


# --------------------------------------------------------------------------------------------------
# Metadata formats


def _require_columns(found: Sequence[str] | None, required: Sequence[str], source: Path) -> None:
    """Raise when a csv/json record lacks a required column, listing what it has."""
    missing = [column for column in required if column not in (found or ())]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; found {list(found or [])}")


def _caption(record: dict, column: str, where: str) -> str:
    """The caption of a record, which must be a string."""
    text = record[column]
    if not isinstance(text, str):
        raise ValueError(f"{where}: {column!r} must be a string; got {text!r}")
    return text


def _infer_type(record: dict, file_path: str, where: str) -> str:
    """``type``/``data_type`` of a record, else guessed from the extension (images by extension, else video)."""
    data_type = record.get("type", record.get("data_type"))
    if data_type is None:
        return "image" if Path(file_path).suffix.lower() in IMAGE_EXTENSIONS else "video"
    if data_type not in DATA_TYPES:
        raise ValueError(f"{where}: type {data_type!r} is not one of {list(DATA_TYPES)}")
    return data_type


def _read_text(path: Path) -> str:
    """A metadata file as text: UTF-8 (a leading byte-order mark is dropped); anything else is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}); "
                         "save the metadata file as UTF-8") from error


def _parse_json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON: {error}") from error


def _read_records(meta_path: Path) -> list[dict]:
    """Records of a JSON list or a csv file."""
    if meta_path.suffix.lower() == ".csv":
        return list(csv.DictReader(io.StringIO(_read_text(meta_path), newline="")))
    records = _parse_json(_read_text(meta_path), str(meta_path))
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise ValueError(f"{meta_path}: expected a JSON list of objects with 'file_path' and 'text'")
    return records


def read_webvid(meta_path: Path | None, data_dir: Path | None, caption_column: str | None) -> list[DataEntry]:
    """Entries of a WebVid csv: ``<data_dir>/<videoid>.mp4`` with the ``name`` column as caption."""
    if meta_path is None:
        raise ValueError("the webvid format needs the csv file as meta_path")
    column = caption_column or "name"
    folder = data_dir if data_dir is not None else meta_path.parent
    reader = csv.DictReader(io.StringIO(_read_text(meta_path), newline=""))
    _require_columns(reader.fieldnames, ["videoid", column], meta_path)
    return [
        DataEntry(folder / f"{row['videoid']}.mp4", _caption(row, column, f"{meta_path} row {number}"), "video")
        for number, row in enumerate(reader, start=2)
    ]


def read_normal(meta_path: Path | None, data_dir: Path | None, caption_column: str | None) -> list[DataEntry]:
    """Entries of a JSON list (or csv) of ``file_path``/``text``/``type`` records."""
    if meta_path is None:
        raise ValueError("the normal format needs the JSON (or csv) metadata file as meta_path")
    column = caption_column or "text"
    folder = data_dir if data_dir is not None else meta_path.parent
    entries = []
    for number, record in enumerate(_read_records(meta_path)):
        where = f"{meta_path} item {number}"
        _require_columns(list(record), ["file_path", column], Path(where))
        file_path = record["file_path"]
        entries.append(DataEntry(folder / file_path, _caption(record, column, where),
                                 _infer_type(record, file_path, where)))
    return entries


def read_imagefolder(meta_path: Path | None, data_dir: Path | None, caption_column: str | None) -> list[DataEntry]:
    """Entries of a diffusers/HF image folder: every ``metadata.jsonl`` under ``data_dir`` (or ``meta_path``)."""
    column = caption_column or "text"
    if meta_path is not None:
        metadata_files = [meta_path]
    elif data_dir is not None:
        metadata_files = sorted(data_dir.rglob("metadata.jsonl"))
    else:
        raise ValueError("the diffusers format needs data_dir (an image folder) or meta_path (a metadata.jsonl)")
    if not metadata_files:
        raise ValueError(f"no metadata.jsonl under {data_dir}; the diffusers format needs one with "
                         f"file_name/{column} lines")
    entries = []
    for metadata in metadata_files:
        for number, line in enumerate(_read_text(metadata).split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{metadata} line {number}"
            record = _parse_json(line, where)
            _require_columns(list(record), ["file_name", column], Path(where))
            entries.append(DataEntry(metadata.parent / record["file_name"], _caption(record, column, where), "image"))
    return entries


DATA_FORMATS: dict[str, Callable[[Path | None, Path | None, str | None], list[DataEntry]]] = {
    "webvid": read_webvid,
    "normal": read_normal,
    "diffusers": read_imagefolder,
}


def load_entries(
    data_format: str,
    meta_path: PathLike | None = None,
    data_dir: PathLike | None = None,
    caption_column: str | None = None,
) -> list[DataEntry]:
    """Read the metadata of a dataset in one of ``DATA_FORMATS`` (files are not checked here).

    Args:
        data_format: ``"webvid"``, ``"normal"`` or ``"diffusers"``.
        meta_path: the csv / JSON / metadata.jsonl file.
        data_dir: the folder that relative paths start from.
        caption_column: caption key (default ``name`` for webvid, ``text`` otherwise).
    """
    if data_format not in DATA_FORMATS:
        raise ValueError(f"unknown data format {data_format!r}; choose one of {sorted(DATA_FORMATS)}")
    as_path = lambda value: None if value is None else Path(value)  # noqa: E731
    return DATA_FORMATS[data_format](as_path(meta_path), as_path(data_dir), caption_column)


# --------------------------------------------------------------------------------------------------
# The dataset


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int (square) or a pair."""
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2:
        raise ValueError(f"a size is an int or (height, width); got {size!r}")
    return (int(size[0]), int(size[1]))


class VideoImageDataset(Dataset):
    """Videos and images with captions, as fixed-size clips, that skips unusable files instead of failing.

    Args:
        entries: the items (see ``load_entries``); listed order is the index order.
        sample_size: output size of video clips, int (square) or ``(height, width)``; with ``enable_bucket``
            an int, the base size the ``ASPECT_RATIO_512`` buckets are scaled to.
        sample_stride: step between sampled frames.
        sample_n_frames: frames per video clip.
        image_sample_size: output size of images (default: ``sample_size``; with ``enable_bucket`` images
            are bucketed from ``sample_size`` like videos).
        video_repeat: extra copies of every video entry appended to the index (0: each video once).
        caption_dropout: probability of replacing a caption by ``""``.
        min_frames: videos with fewer frames are skipped as ``too_short`` (None: short videos repeat frames).
        enable_bucket: give each item the bucket size of its aspect ratio instead of a fixed size.
        size_multiple: bucket sides are rounded down to multiples of this many pixels: the model's pixel
            multiple (16 for patch 2 on 8x latents, as v1; 32 for the released grid motion module).
        random_crop: crop at a random position instead of the centre.
        random_flip: mirror clips horizontally with probability 0.5.
        seed: makes frame choice, crops, flips and caption dropout a function of (seed, epoch, index);
            None draws fresh randomness.
        validate_all: probe every file's header at construction (exact skip counts, slower start).
        max_read_attempts: reads tried for one request before giving up with a ``RuntimeError``.
    """

    def __init__(
        self,
        entries: Sequence[DataEntry],
        sample_size: int | Sequence[int] = 512,
        sample_stride: int = 2,
        sample_n_frames: int = 16,
        image_sample_size: int | Sequence[int] | None = None,
        video_repeat: int = 0,
        caption_dropout: float = 0.0,
        min_frames: int | None = None,
        enable_bucket: bool = False,
        size_multiple: int = DEFAULT_SIZE_MULTIPLE,
        random_crop: bool = False,
        random_flip: bool = False,
        seed: int | None = None,
        validate_all: bool = False,
        max_read_attempts: int = 8,
    ) -> None:
        if enable_bucket and not isinstance(sample_size, int):
            raise ValueError(f"enable_bucket needs an int sample_size (the bucket base size); got {sample_size!r}")
        if not 0.0 <= caption_dropout <= 1.0 or video_repeat < 0 or min(max_read_attempts, sample_stride,
                                                                        sample_n_frames) < 1:
            raise ValueError(
                "need 0 <= caption_dropout <= 1, video_repeat >= 0 and max_read_attempts, sample_stride, "
                f"sample_n_frames >= 1; got {caption_dropout}, {video_repeat}, {max_read_attempts}, "
                f"{sample_stride}, {sample_n_frames}"
            )
        self.entries = list(entries)
        self.sample_size = sample_size
        self.video_size = _as_size(sample_size)
        self.image_size = _as_size(image_sample_size if image_sample_size is not None else sample_size)
        self.sample_stride = sample_stride
        self.sample_n_frames = sample_n_frames
        self.caption_dropout = caption_dropout
        self.min_frames = min_frames
        self.enable_bucket = enable_bucket
        self.size_multiple = size_multiple
        self.random_crop = random_crop
        self.random_flip = random_flip
        self.seed = seed
        self.epoch = 0
        self.max_read_attempts = max_read_attempts
        self.failures: dict[int, str] = {}
        self._first_failure: dict[str, Path] = {}
        self._logged_paths: set[Path] = set()
        self._source_sizes: dict[int, tuple[int, int]] = {}
        self._check_up_front(validate_all)
        self._index = self._build_index(video_repeat)

    @classmethod
    def from_metadata(
        cls,
        data_format: str,
        meta_path: PathLike | None = None,
        data_dir: PathLike | None = None,
        caption_column: str | None = None,
        **options,
    ) -> VideoImageDataset:
        """Build from a metadata file in one of ``DATA_FORMATS``; ``options`` go to ``__init__``."""
        return cls(load_entries(data_format, meta_path, data_dir, caption_column), **options)

    # -- construction ------------------------------------------------------------------------------

    def _check_up_front(self, validate_all: bool) -> None:
        """Drop entries whose file is missing (and, with ``validate_all``, unreadable or too short)."""
        if not self.entries:
            raise ValueError("0 of 0 items usable: the metadata lists no items")
        for entry_id, entry in enumerate(self.entries):
            if not entry.path.is_file():
                self._record_failure(entry_id, "missing", None, log=False)
            elif validate_all:
                self._probe(entry_id, log=False)
        if not self.failures:
            return
        if len(self.failures) == len(self.entries):
            raise ValueError(f"0 of {len(self.entries)} items usable: {self._describe_failures()}")
        logger.warning("dropped %d of %d items up front: %s", len(self.failures), len(self.entries),
                       self._describe_failures())

    def _build_index(self, video_repeat: int) -> list[int]:
        """Entry ids in index order: every usable entry, then ``video_repeat`` more passes over the videos."""
        usable = [entry_id for entry_id in range(len(self.entries)) if entry_id not in self.failures]
        videos = [entry_id for entry_id in usable if self.entries[entry_id].data_type == "video"]
        return usable + videos * video_repeat

    # -- failures ----------------------------------------------------------------------------------

    def _record_failure(self, entry_id: int, reason: str, error: Exception | None, log: bool = True) -> None:
        """Count an unusable entry once, and log its path once (at construction only at debug level)."""
        if entry_id in self.failures:
            return
        path = self.entries[entry_id].path
        self.failures[entry_id] = reason
        self._first_failure.setdefault(reason, path)
        if path in self._logged_paths:
            return
        self._logged_paths.add(path)
        detail = f"{reason}: {error}" if error is not None else reason
        logger.log(logging.WARNING if log else logging.DEBUG, "skipping %s (%s)", path, detail)

    def _failure_reason(self, entry_id: int, error: Exception) -> str:
        """Classify a read error: the file vanished, is too short, or could not be read."""
        if isinstance(error, TooShortError):
            return "too_short"
        return "missing" if not self.entries[entry_id].path.is_file() else "corrupt"

    def _describe_failures(self) -> str:
        """``"2 missing files (first: a.mp4), 1 corrupt (first: b.mp4)"``."""
        counts = Counter(self.failures.values())
        labels = {"missing": "missing files", "corrupt": "corrupt or unreadable", "too_short": "too short"}
        return ", ".join(
            f"{counts[reason]} {labels[reason]} (first: {self._first_failure[reason]})"
            for reason in SKIP_REASONS if counts[reason]
        )

    @property
    def skipped(self) -> Counter:
        """Unusable entries seen so far in this process, by reason (``missing``, ``corrupt``, ``too_short``)."""
        return Counter(self.failures.values())

    def summary(self) -> dict[str, int]:
        """Counts for the end-of-training report: ``listed``, ``usable``, and one per skip reason.

        Only failures seen in this process are included (see the module docstring about DataLoader workers).
        """
        counts = Counter(self.failures.values())
        report = {"listed": len(self.entries), "usable": len(self.entries) - len(self.failures)}
        report.update({reason: counts[reason] for reason in SKIP_REASONS})
        return report

    # -- probing and bucketing ---------------------------------------------------------------------

    def _probe(self, entry_id: int, log: bool = True) -> tuple[int, int] | None:
        """``(height, width)`` of an entry from its header (cached); None, and recorded, when unusable."""
        if entry_id in self._source_sizes:
            return self._source_sizes[entry_id]
        entry = self.entries[entry_id]
        try:
            if entry.data_type == "image":
                size = probe_image(entry.path)
            else:
                info = probe_video(entry.path)
                if info.num_frames < max(1, self.min_frames or 0):
                    raise TooShortError(f"{info.num_frames} frames; at least {max(1, self.min_frames or 0)} needed")
                size = (info.height, info.width)
        except (VideoReadError, TooShortError) as error:
            self._record_failure(entry_id, self._failure_reason(entry_id, error), error, log=log)
            return None
        self._source_sizes[entry_id] = size
        return size

    def _target_size(self, entry_id: int, source_size: tuple[int, int]) -> tuple[int, int]:
        """Output ``(height, width)`` for an entry whose frames are ``source_size``."""
        if self.enable_bucket:
            return bucket_size(*source_size, self.sample_size, self.size_multiple)
        return self._fixed_size(entry_id)

    def _fixed_size(self, entry_id: int) -> tuple[int, int]:
        """Output ``(height, width)`` of an entry without bucketing."""
        return self.image_size if self.entries[entry_id].data_type == "image" else self.video_size

    def bucket_key(self, index: int) -> BucketKey | None:
        """``(data_type, (height, width))`` of the clip ``index`` gives; None when the item is unusable."""
        entry_id = self._index[index]
        if entry_id in self.failures:
            return None
        if not self.enable_bucket:
            return (self.entries[entry_id].data_type, self._fixed_size(entry_id))
        source_size = self._probe(entry_id)
        return None if source_size is None else (self.entries[entry_id].data_type,
                                                 self._target_size(entry_id, source_size))

    # -- reading -----------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Change the random choices of every item (with a seed); call before creating the epoch's iterator."""
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        """Randomness of one request: a function of (seed, epoch, index), so independent of worker layout."""
        return np.random.default_rng(None if self.seed is None else [self.seed, self.epoch, index])

    def _read_frames(self, entry_id: int, rng: np.random.Generator) -> np.ndarray:
        """Decoded ``(F, H, W, 3)`` uint8 frames of an entry (F = 1 for images)."""
        entry = self.entries[entry_id]
        if entry.data_type == "image":
            return read_image(entry.path)[None]
        info = probe_video(entry.path)
        indices = sample_frame_indices(info.num_frames, self.sample_n_frames, self.sample_stride, rng, self.min_frames)
        return read_video_frames(entry.path, indices)

    def _load(self, entry_id: int, size: tuple[int, int] | None, rng: np.random.Generator) -> dict[str, object]:
        """One item as a training example; ``size`` None means the entry's own target size."""
        entry = self.entries[entry_id]
        drop_caption = rng.random() < self.caption_dropout
        frames = self._read_frames(entry_id, rng)
        size = size or self._target_size(entry_id, frames.shape[1:3])
        pixel_values = prepare_clip(frames, size, rng, self.random_crop, self.random_flip)
        return {"pixel_values": pixel_values, "text": "" if drop_caption else entry.text, "data_type": entry.data_type}

    def _candidates(self, index: int) -> list[int]:
        """Entry ids to try for ``index``: it and the following items of the same data type, not known bad."""
        data_type = self.entries[self._index[index]].data_type
        order = (self._index[(index + step) % len(self._index)] for step in range(len(self._index)))
        candidates = []
        for entry_id in order:
            usable = entry_id not in self.failures and entry_id not in candidates
            if usable and self.entries[entry_id].data_type == data_type:
                candidates.append(entry_id)
                if len(candidates) == self.max_read_attempts:
                    break
        return candidates

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, request: int | ClipRequest) -> dict[str, object]:
        """``{"pixel_values": (F, 3, H, W) in [-1, 1], "text": str, "data_type": str}``.

        ``request`` is an index, or ``(index, (height, width))`` as ``AspectRatioBatchSampler`` yields. An
        unusable item is replaced by the next usable one of the same data type, at the same size.
        """
        index, size = request if isinstance(request, tuple) else (request, None)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        index %= len(self)
        rng = self._rng(index)
        tried = []
        for entry_id in self._candidates(index):
            try:
                return self._load(entry_id, size, rng)
            except (VideoReadError, TooShortError) as error:
                self._record_failure(entry_id, self._failure_reason(entry_id, error), error)
                tried.append(str(self.entries[entry_id].path))
        data_type = self.entries[self._index[index]].data_type
        raise RuntimeError(
            f"no readable {data_type} for index {index}: tried {len(tried)} item(s) {tried[:3]} (limit "
            f"max_read_attempts={self.max_read_attempts}); skipped so far: {self.summary()}. "
            "Check the files, or build the dataset with validate_all=True to drop bad ones up front."
        )


def collate_clips(examples: Sequence[dict[str, object]]) -> dict[str, object]:
    """Stack examples into ``{"pixel_values": (B, F, 3, H, W), "text": [str], "data_type": [str]}``.

    Raises a clear error when clip shapes differ (mixing images and videos, or sizes, without the bucket sampler).
    """
    shapes = {tuple(example["pixel_values"].shape) for example in examples}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch clips of different shapes {sorted(shapes)}; use AspectRatioBatchSampler")
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "text": [example["text"] for example in examples],
        "data_type": [example["data_type"] for example in examples],
    }
