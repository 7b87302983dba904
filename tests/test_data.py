"""Training data: formats, frame sampling, transforms, buckets and skipping of unusable files."""

import csv
import json
import logging
import math
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from easyanimate.data import (
    ASPECT_RATIO_512,
    AspectRatioBatchSampler,
    DataEntry,
    TooShortError,
    VideoImageDataset,
    bucket_size,
    clip_span,
    closest_ratio,
    collate_clips,
    load_entries,
    prepare_clip,
    sample_frame_indices,
    scaled_ratio_table,
)
from easyanimate.data.transforms import resize_to_cover
from easyanimate.video_io import save_video

SMALL = dict(sample_size=32, sample_stride=2, sample_n_frames=4, seed=0)


def write_video(path, num_frames: int = 12, height: int = 64, width: int = 64):
    """A flat-gray video whose frame i has level 8·i, so decoded frames reveal their index."""
    levels = np.arange(num_frames, dtype=np.uint8) * 8
    frames = np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()
    return save_video(frames, path, fps=12)


def write_image(path, height: int = 40, width: int = 48, level: int = 128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), level, dtype=np.uint8)).save(path)
    return path


def frame_indices_of(pixel_values: torch.Tensor) -> list[int]:
    """Invert ``write_video``: (F, 3, H, W) in [-1, 1] -> source frame numbers."""
    levels = (pixel_values.mean(dim=(1, 2, 3)) + 1) * 127.5
    return [int(round(level / 8)) for level in levels.tolist()]


def entries(*items) -> list[DataEntry]:
    return [DataEntry(path, text, data_type) for path, text, data_type in items]


# --------------------------------------------------------------------------------------------------
# Frame sampling


def test_frame_indices_follow_the_original_formula():
    rng = random.Random(3)
    starts = set()
    for _ in range(2000):
        indices = sample_frame_indices(100, n_frames=16, stride=2, rng=rng)
        start = int(indices[0])
        starts.add(start)
        assert indices.tolist() == list(range(start, start + 31, 2))
    assert starts == set(range(0, 70))


def test_short_videos_repeat_frames_unless_min_frames_rejects_them():
    indices = sample_frame_indices(10, n_frames=16, stride=2, rng=np.random.default_rng(0))
    assert indices.tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 6, 6, 7, 7, 8, 9]
    with pytest.raises(TooShortError, match="10 frames; at least 31"):
        sample_frame_indices(10, 16, 2, np.random.default_rng(0), min_frames=clip_span(16, 2))
    with pytest.raises(TooShortError):
        sample_frame_indices(0, 4, 1, np.random.default_rng(0))


def test_frame_sampling_is_deterministic_given_a_seed():
    draw = lambda seed: [sample_frame_indices(500, 8, 3, np.random.default_rng(seed)).tolist() for _ in range(3)]  # noqa: E731
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


# --------------------------------------------------------------------------------------------------
# Transforms and buckets


def test_prepare_clip_resizes_the_shorter_side_and_center_crops():
    frames = np.zeros((2, 48, 96, 3), dtype=np.uint8)
    frames[:, :, 16:80] = 255  # white centre band, black sides
    clip = prepare_clip(frames, (32, 32))
    assert clip.shape == (2, 3, 32, 32) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    assert torch.allclose(clip, torch.ones_like(clip))  # the centre crop sees only the band
    assert resize_to_cover(torch.zeros(1, 3, 48, 80), (32, 32)).shape[-2:] == (32, 53)
    assert resize_to_cover(torch.zeros(1, 3, 48, 80), (32, 96)).shape[-2:] == (57, 96)


def test_random_crop_and_flip_need_an_rng_and_keep_the_size():
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="rng"):
        prepare_clip(frames, (32, 32), random_crop_window=True)
    clip = prepare_clip(frames, (32, 32), np.random.default_rng(1), random_crop_window=True, random_flip=True)
    assert clip.shape == (3, 3, 32, 32)


# EasyAnimate v1's ASPECT_RATIO_512, written out as data: height / width (2 decimals) -> (height, width).
V1_ASPECT_RATIO_512 = {
    0.25: (256, 1024), 0.26: (256, 992), 0.27: (256, 960), 0.28: (256, 928), 0.32: (288, 896),
    0.33: (288, 864), 0.35: (288, 832), 0.4: (320, 800), 0.42: (320, 768), 0.48: (352, 736),
    0.5: (352, 704), 0.52: (352, 672), 0.57: (384, 672), 0.6: (384, 640), 0.68: (416, 608),
    0.72: (416, 576), 0.78: (448, 576), 0.82: (448, 544), 0.88: (480, 544), 0.94: (480, 512),
    1.0: (512, 512), 1.07: (512, 480), 1.13: (544, 480), 1.21: (544, 448), 1.29: (576, 448),
    1.38: (576, 416), 1.46: (608, 416), 1.67: (640, 384), 1.75: (672, 384), 2.0: (704, 352),
    2.09: (736, 352), 2.4: (768, 320), 2.5: (800, 320), 2.89: (832, 288), 3.0: (864, 288),
    3.11: (896, 288), 3.62: (928, 256), 3.75: (960, 256), 3.88: (992, 256), 4.0: (1024, 256),
}

# Sides of common photo and video sizes (SD/HD/UHD video, phone and camera stills, square crops).
COMMON_SIDES = [96, 120, 128, 144, 160, 176, 180, 192, 200, 224, 240, 256, 270, 288, 300, 320, 352, 360, 368,
                384, 400, 416, 432, 448, 480, 512, 540, 544, 576, 600, 608, 640, 672, 704, 720, 768, 800, 832,
                848, 854, 864, 896, 900, 960, 1024, 1080, 1152, 1200, 1280, 1366, 1440, 1600, 1920, 2048, 2160,
                2560, 2880, 3000, 3024, 3840, 4000, 4032, 4096]


def v1_ratio_key(height: int, width: int) -> float:
    """v1's assignment: the key with the smallest |key - height / width|; on a tie the first (smallest) key."""
    best_key, best_distance = None, math.inf
    for key in sorted(V1_ASPECT_RATIO_512):
        distance = abs(key - height / width)
        if distance < best_distance:
            best_key, best_distance = key, distance
    return best_key


def test_ratio_table_is_v1s():
    assert ASPECT_RATIO_512 == V1_ASPECT_RATIO_512 and len(ASPECT_RATIO_512) == 40
    assert list(ASPECT_RATIO_512) == sorted(ASPECT_RATIO_512)
    for ratio, (height, width) in ASPECT_RATIO_512.items():
        assert ratio == round(height / width, 2)
        assert height % 32 == 0 and width % 32 == 0


def test_sources_get_v1s_bucket_at_512():
    sizes = [(h, w) for h in COMMON_SIDES for w in COMMON_SIDES]
    sizes += [(h, 1000) for h in range(200, 4100, 7)]  # a dense sweep of ratios 0.2 .. 4.1
    for height, width in sizes:
        key = v1_ratio_key(height, width)
        assert closest_ratio(height, width) == key, (height, width)
        assert bucket_size(height, width, 512) == V1_ASPECT_RATIO_512[key], (height, width)
    assert bucket_size(480, 640, 512) == (416, 576)  # 0.75 is as far from 0.72 as from 0.78 in floats: v1 keeps 0.72
    assert bucket_size(1080, 1920, 512) == (384, 672) and bucket_size(1, 10, 512) == (256, 1024)


@pytest.mark.parametrize("sample_size", [256, 384, 640, 1024])
@pytest.mark.parametrize("multiple", [16, 32, 64])
def test_buckets_at_other_sizes_round_down_to_the_models_multiple(sample_size, multiple):
    table = scaled_ratio_table(sample_size, multiple)
    assert list(table) == list(V1_ASPECT_RATIO_512)
    for key, (height, width) in V1_ASPECT_RATIO_512.items():
        for side, scaled in zip(table[key], (height * sample_size / 512, width * sample_size / 512)):
            assert side == max(multiple, math.floor(scaled / multiple) * multiple)
        if multiple == 16 and sample_size in (256, 1024):  # v1's int(size * sample_size / 512) is a multiple of 16
            assert table[key] == (int(height * sample_size / 512), int(width * sample_size / 512))
    assert bucket_size(1080, 1920, sample_size, multiple) == table[v1_ratio_key(1080, 1920)]


# --------------------------------------------------------------------------------------------------
# Metadata formats


def test_webvid_csv(tmp_path):
    videos = tmp_path / "webvid" / "videos"
    write_video(videos / "1001.mp4")
    write_video(videos / "1002.mp4")
    meta = tmp_path / "webvid" / "csv_of_webvid.csv"
    with open(meta, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["videoid", "name", "page_dir"])
        writer.writerow(["1001", "a red car", "000"])
        writer.writerow(["1002", "a blue sky", "000"])
    dataset = VideoImageDataset.from_metadata("webvid", meta, videos, **SMALL)
    assert len(dataset) == 2
    item = dataset[1]
    assert item["text"] == "a blue sky" and item["data_type"] == "video"
    assert item["pixel_values"].shape == (4, 3, 32, 32)
    assert -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1


def test_normal_json_with_relative_and_absolute_paths_and_types(tmp_path):
    root = tmp_path / "internal_datasets"
    write_video(root / "videos" / "00000001.mp4")
    absolute = write_image(tmp_path / "elsewhere" / "pic.png")
    write_image(root / "train" / "untyped.jpg")
    meta = root / "json_of_internal_datasets.json"
    meta.write_text(json.dumps([
        {"file_path": "videos/00000001.mp4", "text": "men walking", "type": "video"},
        {"file_path": str(absolute), "text": "a notepad", "type": "image"},
        {"file_path": "train/untyped.jpg", "text": "inferred image"},
    ]))
    loaded = load_entries("normal", meta, root)
    assert [entry.data_type for entry in loaded] == ["video", "image", "image"]
    assert loaded[1].path == absolute
    dataset = VideoImageDataset(loaded, **SMALL)
    shapes = [tuple(dataset[i]["pixel_values"].shape) for i in range(3)]
    assert shapes == [(4, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32)]
    assert [dataset[i]["text"] for i in range(3)] == ["men walking", "a notepad", "inferred image"]
    assert load_entries("normal", meta)[0].path == root / "videos" / "00000001.mp4"  # default: the json's folder


def test_diffusers_imagefolder_with_configurable_caption_column(tmp_path):
    root = tmp_path / "diffusers_datasets"
    write_image(root / "train" / "00000001.jpg", level=0)
    write_image(root / "train" / "00000002.jpg", level=255)
    lines = [{"file_name": "train/00000001.jpg", "caption": "dark"},
             {"file_name": "train/00000002.jpg", "caption": "bright"}]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    dataset = VideoImageDataset.from_metadata("diffusers", data_dir=root, caption_column="caption", **SMALL)
    first, second = dataset[0], dataset[1]
    assert (first["text"], second["text"]) == ("dark", "bright")
    assert first["pixel_values"].shape == (1, 3, 32, 32) and first["data_type"] == "image"
    assert first["pixel_values"].max() < -0.9 and second["pixel_values"].min() > 0.9
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text'\]"):
        load_entries("diffusers", data_dir=root)


def test_unknown_format_and_missing_columns_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\['diffusers', 'normal', 'webvid'\]"):
        load_entries("parquet", tmp_path / "meta.json")
    meta = tmp_path / "meta.csv"
    meta.write_text("id,caption\n1,x\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['videoid', 'name'\]; found \['id', 'caption'\]"):
        load_entries("webvid", meta)
    bad_type = tmp_path / "meta.json"
    bad_type.write_text(json.dumps([{"file_path": "a.mp4", "text": "x", "type": "audio"}]))
    with pytest.raises(ValueError, match="'audio' is not one of"):
        load_entries("normal", bad_type)


# --------------------------------------------------------------------------------------------------
# Reading clips


def test_clip_frames_follow_stride_and_seed(tmp_path):
    path = write_video(tmp_path / "ramp.mp4", num_frames=24)
    dataset = VideoImageDataset(entries((path, "ramp", "video")), sample_size=32, sample_stride=3, sample_n_frames=4,
                                seed=5)
    indices = frame_indices_of(dataset[0]["pixel_values"])
    assert np.diff(indices).tolist() == [3, 3, 3] and 0 <= indices[0] <= 24 - 10
    assert frame_indices_of(dataset[0]["pixel_values"]) == indices
    starts = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        starts.add(frame_indices_of(dataset[0]["pixel_values"])[0])
    assert len(starts) > 1


def test_caption_dropout(tmp_path):
    path = write_video(tmp_path / "v.mp4")
    always = VideoImageDataset(entries((path, "caption", "video")), caption_dropout=1.0, **SMALL)
    never = VideoImageDataset(entries((path, "caption", "video")), **SMALL)
    assert always[0]["text"] == "" and never[0]["text"] == "caption"


def test_image_video_mixing_with_repeats_and_homogeneous_batches(tmp_path):
    videos = [write_video(tmp_path / f"v{i}.mp4") for i in range(2)]
    images = [write_image(tmp_path / f"i{i}.png") for i in range(3)]
    items = [(video, f"video {i}", "video") for i, video in enumerate(videos)]
    items += [(image, f"image {i}", "image") for i, image in enumerate(images)]
    dataset = VideoImageDataset(entries(*items), video_repeat=2, **SMALL)
    assert len(dataset) == 3 + 2 * 3
    assert sorted(dataset[i]["text"] for i in range(len(dataset))).count("video 0") == 3
    sampler = AspectRatioBatchSampler(RandomSampler(dataset, generator=torch.Generator().manual_seed(0)), dataset,
                                      batch_size=2)
    batches = list(DataLoader(dataset, batch_sampler=sampler, num_workers=0))
    assert len(batches) == len(sampler) == 3 + 2
    for batch in batches:
        assert len(set(batch["data_type"])) == 1
        frames = 4 if batch["data_type"][0] == "video" else 1
        assert batch["pixel_values"].shape[1:] == (frames, 3, 32, 32)
    assert sum(len(batch["text"]) for batch in batches) == len(dataset)


def test_bucketing_groups_items_by_aspect_ratio(tmp_path):
    square = [write_video(tmp_path / f"square{i}.mp4", height=64, width=64) for i in range(3)]
    wide = [write_video(tmp_path / f"wide{i}.mp4", height=32, width=64) for i in range(3)]
    items = [(path, path.stem, "video") for pair in zip(square, wide) for path in pair]
    dataset = VideoImageDataset(entries(*items), sample_size=256, sample_stride=1, sample_n_frames=2,
                                enable_bucket=True, seed=0)
    assert dataset.bucket_key(0) == ("video", (256, 256))
    assert dataset.bucket_key(1) == ("video", bucket_size(32, 64, 256)) == ("video", (176, 352))
    sampler = AspectRatioBatchSampler(SequentialSampler(dataset), dataset, batch_size=3)
    batches = list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_clips))
    sizes = sorted(tuple(batch["pixel_values"].shape[-2:]) for batch in batches)
    assert sizes == [(176, 352), (256, 256)]
    grid = VideoImageDataset(entries(*items), sample_size=256, sample_stride=1, sample_n_frames=2, enable_bucket=True,
                             size_multiple=32, seed=0)
    assert grid.bucket_key(1) == ("video", (160, 352))  # a 2x2-grid model: 176 rounded down to a multiple of 32
    assert all(len(set(batch["text"])) == 3 for batch in batches)
    assert all(text.startswith("wide") for text in batches[1]["text"])


def test_collate_clips_refuses_mixed_shapes():
    with pytest.raises(ValueError, match="AspectRatioBatchSampler"):
        collate_clips([
            {"pixel_values": torch.zeros(4, 3, 8, 8), "text": "", "data_type": "video"},
            {"pixel_values": torch.zeros(1, 3, 8, 8), "text": "", "data_type": "image"},
        ])


# --------------------------------------------------------------------------------------------------
# Robustness


def make_mixed_quality_set(tmp_path) -> list[DataEntry]:
    """good, corrupt (random bytes), missing, too short (3 frames), good."""
    good_a = write_video(tmp_path / "good_a.mp4", num_frames=12)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(2048))
    short = write_video(tmp_path / "short.mp4", num_frames=3)
    good_b = write_video(tmp_path / "good_b.mp4", num_frames=12)
    return entries(
        (good_a, "good a", "video"),
        (corrupt, "corrupt", "video"),
        (tmp_path / "missing.mp4", "missing", "video"),
        (short, "short", "video"),
        (good_b, "good b", "video"),
    )


def test_bad_items_are_skipped_counted_and_logged_once(tmp_path, caplog):
    items = make_mixed_quality_set(tmp_path)
    with caplog.at_level(logging.WARNING, logger="easyanimate.data.datasets"):
        dataset = VideoImageDataset(items, min_frames=clip_span(4, 2), **SMALL)
        assert len(dataset) == 4  # the missing file is dropped up front
        assert dataset.summary() == {"listed": 5, "usable": 4, "missing": 1, "corrupt": 0, "too_short": 0}
        texts = [dataset[i]["text"] for i in range(len(dataset))]
        texts += [dataset[i]["text"] for i in range(len(dataset))]
    assert texts == ["good a", "good b", "good b", "good b"] * 2  # corrupt and short fall through to the next good one
    assert dataset.summary() == {"listed": 5, "usable": 2, "missing": 1, "corrupt": 1, "too_short": 1}
    assert dataset.skipped["corrupt"] == 1
    messages = [record.getMessage() for record in caplog.records]
    assert sum("corrupt.mp4" in message for message in messages) == 1
    assert sum("short.mp4" in message for message in messages) == 1


def test_validate_all_finds_every_bad_item_up_front(tmp_path):
    dataset = VideoImageDataset(make_mixed_quality_set(tmp_path), min_frames=clip_span(4, 2), validate_all=True,
                                **SMALL)
    assert len(dataset) == 2
    assert dataset.summary() == {"listed": 5, "usable": 2, "missing": 1, "corrupt": 1, "too_short": 1}


def test_replacement_items_keep_the_requested_size(tmp_path):
    items = make_mixed_quality_set(tmp_path)
    dataset = VideoImageDataset(items, sample_size=256, sample_stride=1, sample_n_frames=2, enable_bucket=True, seed=0)
    item = dataset[(1, (192, 352))]  # index 1 is the corrupt file, 2 the square 3-frame one
    assert item["text"] == "short" and item["pixel_values"].shape == (2, 3, 192, 352)


def test_all_bad_dataset_says_why(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(1024))
    items = entries((tmp_path / "a.mp4", "a", "video"), (tmp_path / "b.mp4", "b", "video"), (corrupt, "c", "video"))
    with pytest.raises(ValueError, match=r"0 of 3 items usable: 3 missing files \(first: .*a\.mp4\)"):
        VideoImageDataset(items[:2] + [DataEntry(tmp_path / "c.mp4", "c", "video")], **SMALL)
    expected = (r"0 of 3 items usable: 2 missing files \(first: .*a\.mp4\), "
                r"1 corrupt or unreadable \(first: .*corrupt\.mp4\)")
    with pytest.raises(ValueError, match=expected):
        VideoImageDataset(items, validate_all=True, **SMALL)
    with pytest.raises(ValueError, match="0 of 0 items usable"):
        VideoImageDataset([], **SMALL)


def test_retries_are_bounded(tmp_path):
    bad = []
    for i in range(3):
        path = tmp_path / f"bad{i}.mp4"
        path.write_bytes(os.urandom(512))
        bad.append((path, f"bad {i}", "video"))
    good = write_video(tmp_path / "good.mp4")
    dataset = VideoImageDataset(entries(*bad, (good, "good", "video")), max_read_attempts=2, **SMALL)
    with pytest.raises(RuntimeError, match=r"no readable video for index 0: tried 2 item\(s\).*validate_all=True"):
        dataset[0]
    assert dataset[0]["text"] == "good"  # bad0, bad1 are known bad: bad2 fails, then good
    assert dataset.summary()["corrupt"] == 3


def test_dataloader_is_deterministic_given_a_seed(tmp_path):
    paths = [write_video(tmp_path / f"v{i}.mp4", num_frames=20) for i in range(3)]
    items = entries(*[(path, path.stem, "video") for path in paths])

    def first_epoch():
        dataset = VideoImageDataset(items, random_crop=True, random_flip=True, **SMALL)
        loader = DataLoader(dataset, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1))
        return next(iter(loader))

    first, second = first_epoch(), first_epoch()
    assert first["text"] == second["text"]
    assert torch.equal(first["pixel_values"], second["pixel_values"])
