"""DyT's video data: Kinetics-400 / Something-Something v2 lists of video files, decoded with PyAV, and two
embedded stand-ins (the original ``video_datasets/``; ``dyt/README.md``, "Video").

* Layout (the original's ``configs.DATASETS['K400']``, one root for train and val): ``<data_path>/k400_train.txt``
  and ``<data_path>/k400_val.txt`` (``ssv2_*.txt`` for SSv2; ``train.txt`` / ``val.txt`` are accepted for both),
  one ``relative/path/to/video label`` per line, the videos under ``<data_path>``. Any container and codec FFmpeg
  reads (mp4, webm, avi, mkv) is decoded by PyAV (whose wheel bundles FFmpeg); the original's decord is
  unmaintained and torchvision no longer reads video.
* Frame sampling, per dataset as the original's builder fixed it (:data:`VIDEO_DATASETS`): K400 takes
  ``num_frames`` = 8 frames every ``sampling_rate`` = 16 (a random window in training; 3 evenly spaced windows at
  test time); SSv2 takes one frame from each of 8 equal segments (random in training, the middle at test time).
* Training transforms: K400 resizes the short side to a random size in [1, 1.15] x 224 (bicubic), crops 224 at
  random and flips; SSv2 applies RandAugment (4 ops, magnitude 7; bilinear) and a RandomResizedCrop (scale 0.08-1) with
  no flip. The same random parameters apply to every frame of a clip. Test: short side to 224, then 1 centre crop
  (K400) or 3 crops along the long side (SSv2), so one video gives ``temporal x spatial`` views
  ``[V, 3, T, 224, 224]``. Every frame is normalised with mean = std = 0.5 (the IN21K ViT's statistics).
* ``digits``: moving digits, the scikit-learn 8x8 digits drawn at 3/4 of the frame side on a black canvas with
  faint noise and moving in a straight line with a random velocity, bouncing off the borders (32 frames per video,
  a canvas one quarter wider than high so that spatial crops differ); the label is the digit. ``synthetic``:
  :class:`common.data.vision.SyntheticImages` patterns with fresh noise in every frame. Both are generated per
  index from a fixed seed (nothing is downloaded) and go through the same sampling, transforms and views as
  real videos; they follow the K400 protocol (3 temporal x 1 spatial views) with a sampling rate of 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from common.data import DataError
from common.data.transforms import HALF_MEAN, HALF_STD
from common.data.vision import CorruptImageError, SyntheticImages, digits


@dataclass(frozen=True)
class VideoSpec:
    """One dataset's classes, list files and the clip protocol the original's ``build_dataset`` hard-coded."""

    num_classes: int
    lists: tuple[str, str]  # (train, val) list file names under --data_path; empty for the embedded sets
    sampling_rate: int  # frames between sampled frames; 0: one frame per equal segment (TSN)
    temporal_views: int
    spatial_views: int
    augment: str  # "jitter" (short-side scale jitter + crop + flip) or "randaug" (RandAugment + RRC, no flip)


VIDEO_DATASETS: dict[str, VideoSpec] = {
    "K400": VideoSpec(400, ("k400_train.txt", "k400_val.txt"), 16, 3, 1, "jitter"),
    "SSV2": VideoSpec(174, ("ssv2_train.txt", "ssv2_val.txt"), 0, 1, 3, "randaug"),
    "digits": VideoSpec(10, ("", ""), 2, 3, 1, "jitter"),
    "synthetic": VideoSpec(10, ("", ""), 2, 3, 1, "jitter"),
}
VIDEO_CHOICES = tuple(VIDEO_DATASETS)
EMBEDDED_VIDEO = ("digits", "synthetic")
EMBEDDED_LENGTH = 32  # frames of an embedded video
SYNTHETIC_VIDEOS = {"train": 256, "val": 128}
JITTER_SCALE, RRC_SCALE = (1.0, 1.15), (0.08, 1.0)
RANDAUG_OPS, RANDAUG_MAGNITUDE = 4, 7


class CorruptVideoError(CorruptImageError):
    """A video file that cannot be decoded (one line, also when raised inside a DataLoader worker)."""


SKIP_HINT = "pass --skip_corrupt_videos to skip such files"


# ---------------------------------------------------------------------------------------------- decoding
class DecodedVideo:
    """Every frame of one video as PyAV frames (decoded once); ``video[i]`` is frame i as uint8 [H, W, 3]."""

    def __init__(self, frames: list):
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.frames[index].to_ndarray(format="rgb24")


def decode_video(path: str | Path) -> DecodedVideo:
    """Decode the first video stream of ``path`` with PyAV; an unreadable file is a :class:`CorruptVideoError`."""
    try:
        import av
    except ImportError:  # pragma: no cover - av is a dependency of the project
        raise DataError("reading video files needs PyAV: pip install av") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CorruptVideoError(f"{path} holds no video stream; replace or delete it, or {SKIP_HINT}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = list(container.decode(stream))
    except av.FFmpegError as err:
        reason = " ".join(str(err).split())
        raise CorruptVideoError(f"corrupt video {path} ({reason}); replace or delete it, or {SKIP_HINT}") from None
    if not frames:
        raise CorruptVideoError(f"{path} has no decodable frame; replace or delete it, or {SKIP_HINT}")
    return DecodedVideo(frames)


# ---------------------------------------------------------------------------------------------- sampling
def train_frame_indices(total: int, num_frames: int, sampling_rate: int, generator: torch.Generator | None = None
                        ) -> list[int]:
    """Random training clip: one random frame per equal segment (``sampling_rate`` 0), else ``num_frames``
    frames ``sampling_rate`` apart from a random start (from frame 0, repeating the last frame, when the video
    is shorter than the window)."""
    def randint(low: int, high: int) -> int:  # inclusive bounds
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    if sampling_rate <= 0:
        segment = (total - 1) / num_frames
        return [randint(round(segment * i), round(segment * (i + 1))) for i in range(num_frames)]
    span = sampling_rate * (num_frames - 1) + 1
    if span >= total:
        return [min(i * sampling_rate, total - 1) for i in range(num_frames)]
    start = randint(0, total - span)
    return [start + i * sampling_rate for i in range(num_frames)]


def eval_frame_indices(total: int, num_frames: int, sampling_rate: int, temporal_views: int) -> list[list[int]]:
    """The test clips: with ``sampling_rate`` 0 the middle frame of each equal segment (one view only), else
    ``temporal_views`` windows spread evenly from the start to the end of the video (the centre one for a
    single view), frames past the end clipped to the last."""
    if sampling_rate <= 0:
        segment = (total - 1) / num_frames
        return [[(round(segment * i) + round(segment * (i + 1))) // 2 for i in range(num_frames)]]
    slide = max(total - ((num_frames - 1) * sampling_rate + 1), 0)
    starts = [slide // 2] if temporal_views == 1 else [round(slide / (temporal_views - 1) * v)
                                                        for v in range(temporal_views)]
    return [[min(s + i * sampling_rate, total - 1) for i in range(num_frames)] for s in starts]


# -------------------------------------------------------------------------------------------- transforms
def _normalise(clip: torch.Tensor) -> torch.Tensor:
    """[T, 3, H, W] in [0, 1] to the normalised clip [3, T, H, W]."""
    mean = torch.tensor(HALF_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(HALF_STD).view(1, 3, 1, 1)
    return ((clip - mean) / std).transpose(0, 1).contiguous()


def resize_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of [T, 3, H, W] so that the shorter side is ``size``."""
    return TF.resize(clip, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)


def spatial_crops(clip: torch.Tensor, size: int, views: int) -> list[torch.Tensor]:
    """``views`` square crops of side ``size`` of a clip whose short side is ``size``: the centre (1 view), or
    evenly spaced along the long side from one end to the other."""
    h, w = clip.shape[-2:]
    margin = max(h, w) - size
    starts = [margin // 2] if views == 1 else [round(margin / (views - 1) * v) for v in range(views)]
    top = (h - size) // 2
    left = (w - size) // 2
    if h > w:
        return [clip[..., s:s + size, left:left + size] for s in starts]
    return [clip[..., top:top + size, s:s + size] for s in starts]


class TrainClipTransform:
    """uint8 frames [T, H, W, 3] to a normalised training clip [3, T, S, S] (module docstring); one draw of the
    random parameters per clip."""

    def __init__(self, size: int, augment: str):
        if augment not in ("jitter", "randaug"):
            raise ValueError(f"unknown augment {augment!r}")
        self.size, self.augment = size, augment
        self.randaug = v2.RandAugment(num_ops=RANDAUG_OPS, magnitude=RANDAUG_MAGNITUDE,
                                      interpolation=InterpolationMode.BILINEAR)
        self.crop = v2.RandomResizedCrop(size, scale=RRC_SCALE, interpolation=InterpolationMode.BICUBIC,
                                         antialias=True)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        clip = frames.permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        if self.augment == "randaug":
            clip = self.crop(self.randaug(clip)).float() / 255.0
            return _normalise(clip)
        low, high = (round(self.size * s) for s in JITTER_SCALE)
        clip = resize_short_side(clip.float() / 255.0, int(torch.randint(low, high + 1, (1,))))
        h, w = clip.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, (1,)))
        left = int(torch.randint(0, w - self.size + 1, (1,)))
        clip = clip[..., top:top + self.size, left:left + self.size]
        if torch.rand(1).item() < 0.5:
            clip = clip.flip(-1)
        return _normalise(clip)


def eval_views(frames: Sequence[torch.Tensor], size: int, spatial_views: int) -> torch.Tensor:
    """The test views ``[temporal x spatial, 3, T, S, S]`` of the temporal clips (uint8 [T, H, W, 3] each)."""
    views = []
    for clip in frames:
        clip = resize_short_side(clip.permute(0, 3, 1, 2).float() / 255.0, size)
        views += [_normalise(crop) for crop in spatial_crops(clip, size, spatial_views)]
    return torch.stack(views)


# ------------------------------------------------------------------------------------------------ sources
class VideoList:
    """The videos of a list file, ``relative/path label`` per line, read relative to ``root``."""

    def __init__(self, root: Path, list_file: Path, num_classes: int):
        self.root = root
        self.samples: list[tuple[Path, int]] = []
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{list_file}:{lineno}: expected 'relative/video/path label', got {line!r}")
            label = int(parts[1])
            if not 0 <= label < num_classes:
                raise DataError(f"{list_file}:{lineno}: label {label} is outside 0..{num_classes - 1}")
            self.samples.append((root / parts[0], label))
        if not self.samples:
            raise DataError(f"{list_file} lists no videos; write one 'relative/video/path label' per line")
        missing = next((p for p, _ in self.samples if not p.is_file()), None)
        if missing is not None:
            raise DataError(f"{list_file} lists {missing}, which does not exist; video paths are read relative to "
                            f"{root}")
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[DecodedVideo, int]:
        path, label = self.samples[index]
        return decode_video(path), label


def _canvas(side: int) -> tuple[int, int]:
    return side, side + side // 4


class MovingDigits:
    """Moving scikit-learn digits (module docstring); video i of a split is the same on every run."""

    def __init__(self, split: str, side: int, classes: tuple[int, ...] = (), length: int = EMBEDDED_LENGTH):
        images = digits(split, img_size=8)
        ink, targets = images.images[:, 0] * 0.5 + 0.5, images.targets_tensor
        if classes:
            keep = torch.isin(targets, torch.tensor(classes))
            ink, targets = ink[keep], torch.tensor([classes.index(int(t)) for t in targets[keep]])
        self.glyph = max(3 * side // 4, 2)
        self.ink = F.interpolate(ink[:, None], size=(self.glyph, self.glyph), mode="bilinear",
                                 align_corners=False)[:, 0].clamp(0, 1)
        self.targets = targets.tolist()
        self.side, self.length = side, length
        self.seed = ("train", "val").index(split) * 1_000_003 + 17

    def __len__(self) -> int:
        return len(self.targets)

    def read(self, index: int) -> tuple[torch.Tensor, int]:
        gen = torch.Generator().manual_seed(self.seed + index)
        h, w = _canvas(self.side)
        room = [h - self.glyph, w - self.glyph]
        start, speed, sign = (torch.rand(2, generator=gen, dtype=torch.float64).tolist() for _ in range(3))
        position = [s * r for s, r in zip(start, room, strict=True)]
        velocity = [(0.5 + v) * self.side / 16 * (1 if d < 0.5 else -1) for v, d in zip(speed, sign, strict=True)]
        corners = []
        for _ in range(self.length):
            corners.append([round(p) for p in position])
            for axis in range(2):  # move, bouncing off the borders
                position[axis] += velocity[axis]
                if not 0 <= position[axis] <= room[axis]:
                    velocity[axis] = -velocity[axis]
                    position[axis] = min(max(position[axis], 0.0), float(room[axis]))
        video = 0.05 * torch.randn(self.length, h, w, generator=gen).abs()
        offsets = torch.arange(self.glyph)
        top_left = torch.tensor(corners)
        frame = torch.arange(self.length)[:, None, None]
        rows = (top_left[:, 0, None] + offsets)[:, :, None]
        cols = (top_left[:, 1, None] + offsets)[:, None, :]
        video[frame, rows, cols] = torch.maximum(video[frame, rows, cols], self.ink[index])
        frames = (video.clamp(0, 1) * 255).round().to(torch.uint8)
        return frames[..., None].expand(-1, -1, -1, 3), self.targets[index]


class SyntheticClips:
    """Videos whose every frame is a class pattern of :class:`SyntheticImages` plus fresh N(0, 1) noise."""

    def __init__(self, split: str, side: int, length: int = EMBEDDED_LENGTH):
        stream = ("train", "val").index(split)
        h, w = _canvas(side)
        self.images = SyntheticImages(SYNTHETIC_VIDEOS[split], img_size=w, stream=stream)
        self.targets, self.h, self.length = self.images.targets, h, length

    def __len__(self) -> int:
        return len(self.targets)

    def read(self, index: int) -> tuple[torch.Tensor, int]:
        label = self.images.targets[index]
        gen = torch.Generator().manual_seed(self.images.base_seed + index)
        pattern = self.images.patterns[label][:, :self.h]
        video = pattern + torch.randn(self.length, *pattern.shape, generator=gen)
        frames = ((video * 0.25 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return frames.permute(0, 2, 3, 1), label


# ----------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class ClipSettings:
    """How clips are cut from a video: frame count, spacing, test views, training augmentation, side."""

    size: int
    num_frames: int
    sampling_rate: int
    temporal_views: int
    spatial_views: int
    augment: str

    @property
    def views(self) -> int:
        return self.temporal_views * self.spatial_views


class VideoClips(Dataset):
    """Clips of a source's videos: a random clip ``[3, T, S, S]`` for training, or the test views
    ``[V, 3, T, S, S]``; items are ``(clip or views, label)``. With ``skip_corrupt`` an undecodable video is
    replaced by the next one and counted (``skipped``)."""

    def __init__(self, source, settings: ClipSettings, train: bool, skip_corrupt: bool = False):
        self.source, self.settings, self.train, self.skip_corrupt = source, settings, train, skip_corrupt
        self.transform = TrainClipTransform(settings.size, settings.augment) if train else None
        self.targets = source.targets
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.source)

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        video, label = self.source.read(index)
        s = self.settings

        def gather(indices: list[int]) -> torch.Tensor:
            return torch.stack([torch.as_tensor(video[i]) for i in indices])

        if self.train:
            return self.transform(gather(train_frame_indices(len(video), s.num_frames, s.sampling_rate))), label
        clips = [gather(ix) for ix in eval_frame_indices(len(video), s.num_frames, s.sampling_rate,
                                                         s.temporal_views)]
        return eval_views(clips, s.size, s.spatial_views), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self)):
            try:
                return self._item((index + offset) % len(self))
            except CorruptVideoError as err:
                if not self.skip_corrupt:
                    raise
                self.skipped += 1
                print(f"warning: skipped {str(err).replace(f'; replace or delete it, or {SKIP_HINT}', '')} "
                      f"({self.skipped} skipped so far in this process)", file=sys.stderr)
        raise DataError("every video of the list is corrupt")


def _list_file(root: Path, name: str, split: str) -> Path:
    own = root / VIDEO_DATASETS[name].lists[0 if split == "train" else 1]
    plain = root / f"{split}.txt"
    if own.is_file():
        return own
    if plain.is_file():
        return plain
    raise DataError(f"no {own.name} (or {plain.name}) in --data_path {root}; {name} expects {root}/{own.name} with "
                    "lines 'relative/video/path label' and the videos under that folder, or run on the embedded "
                    "videos with --dataset digits")


def build_video_dataset(name: str, data_path: str | Path | None, settings: ClipSettings,
                        digit_classes: tuple[int, ...] = (), skip_corrupt: bool = False
                        ) -> tuple[VideoClips, VideoClips, int]:
    """``(train, val, nb_classes)`` of ``name`` (:data:`VIDEO_DATASETS`) cut as ``settings`` says."""
    spec = VIDEO_DATASETS[name]
    if name == "digits":
        train_src, val_src = (MovingDigits(s, settings.size, digit_classes) for s in ("train", "val"))
        num_classes = len(digit_classes) or spec.num_classes
    elif name == "synthetic":
        train_src, val_src = (SyntheticClips(s, settings.size) for s in ("train", "val"))
        num_classes = spec.num_classes
    else:
        if not data_path or not Path(data_path).is_dir():
            raise DataError(f"--dataset {name} needs --data_path, an existing folder holding {spec.lists[0]}, "
                            f"{spec.lists[1]} and the videos; or run on the embedded videos with --dataset digits")
        root = Path(data_path)
        train_src, val_src = (VideoList(root, _list_file(root, name, s), spec.num_classes) for s in ("train", "val"))
        num_classes = spec.num_classes
    return (VideoClips(train_src, settings, True, skip_corrupt), VideoClips(val_src, settings, False, skip_corrupt),
            num_classes)


__all__ = ["VIDEO_CHOICES", "VIDEO_DATASETS", "ClipSettings", "CorruptVideoError", "VideoClips", "build_video_dataset",
           "decode_video"]
