"""DyT video data: the original's frame sampling and views, a tiny folder of real video files decoded with PyAV,
corrupt files and malformed lists, and the embedded moving digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import DataError
from dyt.video_data import (
    ClipSettings,
    CorruptVideoError,
    MovingDigits,
    TrainClipTransform,
    VideoClips,
    VideoList,
    build_video_dataset,
    decode_video,
    eval_frame_indices,
    spatial_crops,
    train_frame_indices,
)

av = pytest.importorskip("av")


def write_video(path: Path, num_frames: int, height: int = 24, width: int = 32, fps: int = 10) -> None:
    """An mpeg4 video whose frame i is a flat grey of level 10 * i (readable back despite the lossy codec)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            image = np.full((height, width, 3), 10 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def level(frame: torch.Tensor | np.ndarray) -> int:
    """The frame index a flat frame of :func:`write_video` encodes."""
    return round(float(np.asarray(frame, dtype=np.float64).mean()) / 10)


# ------------------------------------------------------------------------------------------------ sampling
def test_train_sampling_windows_and_segments():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        window = train_frame_indices(300, 8, 16, gen)
        assert np.all(np.diff(window) == 16) and 0 <= window[0] <= 300 - 113
        segments = train_frame_indices(40, 8, 0, gen)
        bounds = [(round(39 / 8 * i), round(39 / 8 * (i + 1))) for i in range(8)]
        assert all(lo <= x <= hi for x, (lo, hi) in zip(segments, bounds, strict=True))
    assert train_frame_indices(20, 8, 4, gen) == [0, 4, 8, 12, 16, 19, 19, 19]  # shorter than the window


def test_eval_views_spread_over_the_video():
    assert eval_frame_indices(113 + 10, 8, 16, 3) == [[s + 16 * i for i in range(8)] for s in (0, 5, 10)]
    assert eval_frame_indices(113 + 10, 8, 16, 1) == [[5 + 16 * i for i in range(8)]]
    assert eval_frame_indices(9, 2, 0, 1) == [[2, 6]]  # middle of each of two segments
    assert eval_frame_indices(5, 3, 4, 2) == [[0, 4, 4], [0, 4, 4]]  # too short: clipped to the last frame


def test_spatial_crops_cover_the_long_side():
    clip = torch.arange(10.0).view(1, 1, 1, 10).expand(2, 3, 4, 10)  # width 10, height 4
    left, centre, right = spatial_crops(clip, 4, 3)
    assert left[0, 0, 0].tolist() == [0, 1, 2, 3] and right[0, 0, 0].tolist() == [6, 7, 8, 9]
    assert centre[0, 0, 0].tolist() == [3, 4, 5, 6] and spatial_crops(clip, 4, 1)[0].equal(centre)


def test_training_transforms_crop_every_frame_alike():
    frames = torch.randint(0, 255, (4, 20, 30, 3), dtype=torch.uint8)
    frames[1:] = frames[0]  # a still video: every frame of the clip must come out the same
    for augment in ("jitter", "randaug"):
        clip = TrainClipTransform(16, augment)(frames)
        assert clip.shape == (3, 4, 16, 16)
        assert all(torch.allclose(clip[:, 0], clip[:, t]) for t in range(1, 4))


# ------------------------------------------------------------------------------------------ real video files
@pytest.fixture(scope="module")
def k400_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("k400")
    for name, frames in (("a/v0.mp4", 20), ("b/v1.mp4", 12), ("a/v2.mp4", 16)):
        write_video(root / name, frames)
    (root / "k400_train.txt").write_text("a/v0.mp4 3\nb/v1.mp4 399\n")
    (root / "k400_val.txt").write_text("a/v2.mp4 7\n")
    return root


def test_decode_reads_every_frame_in_order(k400_folder):
    video = decode_video(k400_folder / "a" / "v0.mp4")
    assert len(video) == 20 and video[0].shape == (24, 32, 3) and video[0].dtype == np.uint8
    assert [level(video[i]) for i in range(20)] == list(range(20))


def test_k400_layout_gives_training_clips_and_eval_views(k400_folder):
    settings = ClipSettings(size=16, num_frames=4, sampling_rate=2, temporal_views=3, spatial_views=1,
                            augment="jitter")
    train, val, classes = build_video_dataset("K400", k400_folder, settings)
    assert classes == 400 and len(train) == 2 and len(val) == 1 and train.targets == [3, 399]
    clip, label = train[1]
    assert clip.shape == (3, 4, 16, 16) and label == 399
    views, label = val[0]
    assert views.shape == (3, 3, 4, 16, 16) and label == 7
    # 16 frames, windows of 7 frames starting at 0, 4 and 9 (round(9 / 2 * v)); pixels are normalised (x - .5) / .5
    starts = [level((views[v, 0, 0] * 0.5 + 0.5) * 255) for v in range(3)]
    assert starts == [0, 4, 9]


def test_corrupt_video_is_one_line_or_skipped(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 4)
    with pytest.raises(CorruptVideoError, match="corrupt video .*bad.mp4") as err:
        decode_video(bad)
    assert "\n" not in str(err.value) and "--skip_corrupt_videos" in str(err.value)
    write_video(tmp_path / "good.mp4", 6)
    source = VideoList(tmp_path, _list(tmp_path, "bad.mp4 1\ngood.mp4 2\n"), 400)
    settings = ClipSettings(8, 2, 1, 1, 1, "jitter")
    with pytest.raises(CorruptVideoError):
        VideoClips(source, settings, train=False)[0]
    skipping = VideoClips(source, settings, train=False, skip_corrupt=True)
    views, label = skipping[0]
    assert label == 2 and skipping.skipped == 1
    # raised in a DataLoader worker, torch re-raises it with the worker's traceback as the message: one line again
    wrapped = CorruptVideoError(f"Caught CorruptVideoError in DataLoader worker process 0.\nOriginal Traceback (most "
                                f"recent call last):\n  File ...\ndyt.video_data.CorruptVideoError: {err.value}\n")
    assert str(wrapped) == str(err.value)


def _list(root: Path, text: str) -> Path:
    path = root / "list.txt"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, needle", [
    ("a/v0.mp4\n", "expected 'relative/video/path label'"),
    ("a/v0.mp4 400\n", "label 400 is outside 0..399"),
    ("a/missing.mp4 1\n", "which does not exist"),
    ("\n", "lists no videos"),
])
def test_malformed_lists(k400_folder, tmp_path, text, needle):
    with pytest.raises(DataError, match=needle):
        VideoList(k400_folder, _list(tmp_path, text), 400)


def test_missing_lists_and_folder_say_the_layout(tmp_path):
    settings = ClipSettings(8, 2, 1, 1, 1, "jitter")
    with pytest.raises(DataError, match="no ssv2_train.txt .*--dataset digits"):
        build_video_dataset("SSV2", tmp_path, settings)
    with pytest.raises(DataError, match="needs --data_path"):
        build_video_dataset("K400", tmp_path / "nowhere", settings)


# --------------------------------------------------------------------------------------------- embedded data
def test_moving_digits_move_and_are_reproducible():
    first, second = MovingDigits("val", 16), MovingDigits("val", 16)
    video, label = first.read(3)
    assert video.shape == (32, 16, 20, 3) and video.dtype == torch.uint8 and label == first.targets[3]
    assert torch.equal(video, second.read(3)[0]) and not torch.equal(video, first.read(4)[0])
    assert not torch.equal(video[0], video[10])  # the digit moved
    subset = MovingDigits("val", 16, classes=(7, 2))
    assert set(subset.targets) == {0, 1} and len(subset) == sum(t in (7, 2) for t in first.targets)
    sevens = [i for i, t in enumerate(first.targets) if t == 7]
    assert subset.targets.count(0) == len(sevens)  # relabelled in the order given
