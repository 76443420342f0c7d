"""Spatial transforms: exact sizes and crop windows per protocol, pixel values against PyTorch references."""
import importlib.util
import math
import pathlib

import numpy as np
import pytest

from nonlocal_zoo.data import (
    crop_offsets,
    horizontal_flip,
    multiview_clips,
    normalize,
    random_crop,
    random_short_side,
    resolve_preprocessing,
    short_side_resize,
    short_side_resize_shape,
    spatial_views,
    train_clip,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ptv_functional():
    """pytorchvideo.transforms.functional (PySlowFast's transforms), loaded without the package __init__ (which
    needs torchvision)."""
    pytorchvideo = pytest.importorskip("pytorchvideo")
    path = pathlib.Path(pytorchvideo.__file__).parent / "transforms" / "functional.py"
    spec = importlib.util.spec_from_file_location("ptv_transforms_functional", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SIZES = [(240, 320), (320, 240), (256, 340), (256, 256), (37, 53), (53, 37), (23, 500), (1080, 1920), (360, 640),
         (100, 101), (719, 1280)]


# ---------------------------------------------------------------- resize sizes (transcriptions)


def official_scale_shape(height, width, side_length):
    # ScaleTransform: ratio = (float)side / (float)(short); new = (int)((float)len * ratio), in float32
    if height > width:
        ratio = np.float32(side_length) / np.float32(width)
    else:
        ratio = np.float32(side_length) / np.float32(height)
    return int(np.float32(np.float32(height) * ratio)), int(np.float32(np.float32(width) * ratio))


def mmcv_rescale_shape(height, width, short):
    scale_factor = min(math.inf / max(height, width), short / min(height, width))
    return int(height * float(scale_factor) + 0.5), int(width * float(scale_factor) + 0.5)


def gluoncv_resize_shape(im_h, im_w, size):
    if im_w < im_h:
        ow = size
        oh = int(size * im_h / im_w)
    else:
        oh = size
        ow = int(size * im_w / im_h)
    return oh, ow


@pytest.mark.parametrize("short_side", [224, 256, 320, 288])
def test_short_side_resize_shapes(short_side, ptv_functional):
    for h, w in SIZES:
        ref = official_scale_shape(h, w, short_side)
        ours = short_side_resize_shape(h, w, short_side)
        long_axis = 0 if h > w else 1
        assert ours[long_axis] == ref[long_axis] and min(ours) == short_side, (h, w, ours, ref)
        assert short_side_resize_shape(h, w, short_side, sampling="mmaction2") == mmcv_rescale_shape(h, w, short_side)
        assert short_side_resize_shape(h, w, short_side, sampling="gluoncv") == gluoncv_resize_shape(h, w, short_side)
        x = torch.zeros(3, 1, h, w)
        expected = tuple(ptv_functional.short_side_scale(x, short_side).shape[2:])
        assert short_side_resize_shape(h, w, short_side, sampling="pyslowfast") == expected


def test_official_float32_truncation_keeps_the_short_side():
    # The official float32 formula gives 223 for a 23 px side scaled to 224; we keep 224 (documented).
    assert official_scale_shape(23, 40, 224)[0] == 223
    assert short_side_resize_shape(23, 40, 224) == (224, official_scale_shape(23, 40, 224)[1])


# ---------------------------------------------------------------- resize values


def test_float_resize_matches_torch_bilinear(ptv_functional):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(3, 37, 53, 3)).astype(np.float32)
    for side in (20, 64, 100):
        ours = short_side_resize(x, side, sampling="pyslowfast")
        ref = ptv_functional.short_side_scale(torch.from_numpy(x).permute(3, 0, 1, 2), side).permute(1, 2, 3, 0)
        np.testing.assert_allclose(ours, ref.numpy(), atol=2e-3)


def test_uint8_resize_is_bilinear_within_one_level():
    x = np.random.default_rng(1).integers(0, 256, size=(2, 30, 40, 3), dtype=np.uint8)
    ours = short_side_resize(x, 45)  # official: OpenCV fixed-point bilinear on uint8
    assert ours.dtype == np.uint8 and ours.shape == (2, 45, 60, 3)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2).float(), size=(45, 60),
                                          mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours.astype(np.float64) - ref).max() <= 1.0


# ---------------------------------------------------------------- crops


def official_crop_offsets(height, width, h_crop, w_crop, spatial_pos):
    # ClipTransformFlex, use_center_crop
    h_off = (height - h_crop) // 2
    w_off = (width - w_crop) // 2
    if spatial_pos >= 0:
        now_pos = spatial_pos % 3
        if h_off > 0:
            h_off = h_off * now_pos
        else:
            w_off = w_off * now_pos
    return h_off, w_off


def mmaction2_three_crop_offsets(img_h, img_w, crop):
    # ThreeCrop returns (x, y) offsets left, right, middle; ours go start, centre, end
    if crop == img_h:
        w_step = (img_w - crop) // 2
        offsets = [(0, 0), (2 * w_step, 0), (w_step, 0)]
    else:
        h_step = (img_h - crop) // 2
        offsets = [(0, 0), (0, 2 * h_step), (0, h_step)]
    left, right, middle = [(y, x) for x, y in offsets]
    return [left, middle, right]


def gluoncv_crop_offsets(h, w, size, num_crop):
    spatial_step = 1.0 * (max(h, w) - size) / (num_crop - 1)
    out = []
    for split_nb in range(num_crop):
        spatial_start = int(split_nb * spatial_step)
        out.append((spatial_start, 0) if h >= w else (0, spatial_start))
    return out


@pytest.mark.parametrize("size", [224, 256])
def test_three_crop_offsets(size):
    for h, w in [(256, 340), (340, 256), (256, 341), (256, 256), (300, 301), (1080, 1920)]:
        if min(h, w) < size:
            continue
        assert crop_offsets(h, w, size) == [official_crop_offsets(h, w, size, size, p) for p in range(3)]
        assert crop_offsets(h, w, size, num_crops=1) == [official_crop_offsets(h, w, size, size, -1)]
        if size == min(h, w):
            assert crop_offsets(h, w, size, sampling="mmaction2") == mmaction2_three_crop_offsets(h, w, size)
            assert crop_offsets(h, w, size, sampling="gluoncv") == gluoncv_crop_offsets(h, w, size, 3)


def test_pyslowfast_crops_match_pytorchvideo_uniform_crop(ptv_functional):
    rng = np.random.default_rng(2)
    for h, w in [(256, 340), (341, 256), (256, 256), (259, 300)]:
        clip = rng.integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
        ours = spatial_views(clip, 256, num_crops=3, sampling="pyslowfast")
        t = torch.from_numpy(clip).permute(3, 0, 1, 2)  # (C, T, H, W)
        for idx in range(3):
            ref = ptv_functional.uniform_crop(t, 256, idx).permute(1, 2, 3, 0).numpy()
            np.testing.assert_array_equal(ours[idx], ref)
        centre = spatial_views(clip, 256, num_crops=1, sampling="pyslowfast")[0]
        np.testing.assert_array_equal(centre, ptv_functional.uniform_crop(t, 256, 1).permute(1, 2, 3, 0).numpy())


def test_spatial_views_are_exact_slices():
    clip = np.arange(2 * 256 * 341 * 3, dtype=np.int64).reshape(2, 256, 341, 3) % 251
    views = spatial_views(clip, 256, num_crops=3)
    assert views.shape == (3, 2, 256, 256, 3)
    for view, left in zip(views, (0, 42, 84)):
        np.testing.assert_array_equal(view, clip[:, :, left:left + 256])


def test_random_crop_and_flip():
    clip = np.arange(3 * 20 * 30 * 3, dtype=np.int64).reshape(3, 20, 30, 3)
    seen = set()
    for seed in range(200):
        out = random_crop(clip, 16, rng=np.random.default_rng(seed))
        top, left = divmod(int(out[0, 0, 0, 0]) // 3, 30)
        np.testing.assert_array_equal(out, clip[:, top:top + 16, left:left + 16])
        seen.add((top, left))
    # official: offsets uniform over [0, L - c] inclusive
    assert {t for t, _ in seen} == set(range(5)) and {lft for _, lft in seen} == set(range(15))
    firsts = [random_crop(clip, 16, rng=np.random.default_rng(s), sampling="pyslowfast")[0, 0, 0, 0]
              for s in range(200)]
    seen = {divmod(int(v) // 3, 30) for v in firsts}
    assert {t for t, _ in seen} == set(range(4))  # numpy randint(0, L - c): upper bound excluded
    np.testing.assert_array_equal(horizontal_flip(clip), clip[:, :, ::-1])


def test_scale_jitter_range():
    rng = np.random.default_rng(0)
    sides = {random_short_side((256, 260), rng=rng) for _ in range(300)}
    assert sides == {256, 257, 258, 259, 260}
    with pytest.raises(ValueError, match=r"Received: scale_range=\(300, 256\)"):
        random_short_side((300, 256), rng=rng)


# ---------------------------------------------------------------- normalisation and presets


def test_normalisation_per_protocol():
    x = np.random.default_rng(0).integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)
    ours = normalize(x, mean=114.75, std=57.375)
    np.testing.assert_allclose(ours, (x.astype(np.float64) / 255.0 - 0.45) / 0.225, rtol=1e-5, atol=1e-5)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # mmaction2, 0-255 statistics
    np.testing.assert_allclose(normalize(x, mean=mean, std=std), (x - np.array(mean)) / np.array(std), rtol=1e-5)
    # 0-1 statistics (scale=1) give the same numbers as the equivalent 0-255 statistics
    np.testing.assert_allclose(normalize(x, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1.0),
                               normalize(x, mean=np.array((0.485, 0.456, 0.406)) * 255,
                                         std=np.array((0.229, 0.224, 0.225)) * 255), rtol=1e-4, atol=1e-5)
    bgr = normalize(x, mean=(1.0, 2.0, 3.0), std=1.0, channel_order="BGR")
    np.testing.assert_allclose(bgr, x[..., ::-1] - np.array((1.0, 2.0, 3.0)))


@pytest.mark.parametrize("shape, dtype, order", [((2, 3, 5, 7, 3), np.uint8, "RGB"), ((3, 4, 3), np.float32, "RGB"),
                                                 ((6, 5, 3), np.uint8, "BGR"), ((3,), np.uint8, "RGB"),
                                                 ((2, 9, 3), np.float64, "RGB")])
def test_per_channel_normalisation_is_bit_exact(shape, dtype, order):
    """The row-wise per-channel path computes x * factor_c + offset_c in float32, exactly as one channel at a time."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=shape).astype(dtype)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    factor, offset = (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32)
    src = x[..., ::-1] if order == "BGR" else x
    expected = np.empty(shape, np.float32)
    for c in range(3):  # the reference: float32 multiply then float32 add, channel by channel
        expected[..., c] = (src[..., c] * factor[c]).astype(np.float32) + offset[c]
    np.testing.assert_array_equal(normalize(x, mean=mean, std=std, channel_order=order), expected)


def test_preset_resolution_and_overrides():
    config = resolve_preprocessing({"preprocessing": {"num_frames": 32, "sampling_rate": 2, "sampling": "mmaction2"}},
                                   test_crop=224)
    got = (config["num_frames"], config["sampling_rate"], config["sampling"], config["test_crop"])
    assert got == (32, 2, "mmaction2", 224)
    assert config["mean"] == (114.75,) * 3  # default filled in
    with pytest.raises(ValueError, match=r"Received: test_num_crops=2"):
        resolve_preprocessing(None, test_num_crops=2)
    with pytest.raises(ValueError, match=r"Unknown preprocessing option"):
        resolve_preprocessing(None, crop=3)
    from nonlocal_zoo import presets
    name = presets.list_models(pretrained=True)[0]
    assert resolve_preprocessing(name)["num_frames"] == presets.get_preset(name)["preprocessing"]["num_frames"]


def test_train_clip_and_views_give_exact_sizes_and_values():
    # In-memory video whose pixels name their position: R = 5 t, G = 3 y, B = 3 x.
    t, y, x = np.meshgrid(np.arange(40), np.arange(64), np.arange(80), indexing="ij")
    video = np.stack([5 * t, 3 * y, 3 * x], axis=-1).astype(np.uint8)  # (40, 64, 80, 3)
    flips = set()
    for seed in range(8):
        clip = train_clip(video, rng=seed, num_frames=4, sampling_rate=2, train_crop=48,
                          train_short_side_range=(64, 64))
        assert clip.shape == (4, 48, 48, 3) and clip.dtype == np.float32
        raw = np.round(clip * 57.375 + 114.75).astype(np.int64)  # undo the official normalisation
        frames, rows, cols = raw[..., 0] // 5, raw[..., 1] // 3, raw[..., 2] // 3
        start, top = frames[0, 0, 0], rows[0, 0, 0]
        assert 0 <= start <= 40 - 8 and 0 <= top <= 64 - 48
        np.testing.assert_array_equal(frames[:, 0, 0], start + 2 * np.arange(4))  # T=4 frames at stride 2
        np.testing.assert_array_equal(rows[0, :, 0], top + np.arange(48))
        flipped = cols[0, 0, 0] > cols[0, 0, 1]
        left = cols[0, 0, -1] if flipped else cols[0, 0, 0]
        expected = left + np.arange(48)
        np.testing.assert_array_equal(cols[0, 0], expected[::-1] if flipped else expected)
        assert 0 <= left <= 80 - 48
        flips.add(bool(flipped))
    assert flips == {False, True}
    views = multiview_clips(video, num_clips=2, num_crops=3, num_frames=4, sampling_rate=2, test_short_side=64,
                            test_crop=64)
    assert views.shape == (6, 4, 64, 64, 3)
    # clip 1 starts at int(40 / 2 * 1) = 20; crop 2 is at the right end (offset 2 * ((80 - 64) // 2) = 16)
    np.testing.assert_allclose(views[5], (video[20:28:2, :, 16:80].astype(np.float32) - 114.75) / 57.375, atol=1e-6)


def test_raw_views_stay_rgb_and_normalisation_applies_the_channel_order():
    video = np.random.default_rng(3).integers(0, 256, size=(12, 32, 40, 3), dtype=np.uint8)
    kwargs = dict(num_clips=2, num_crops=3, num_frames=4, sampling_rate=2, test_short_side=32, test_crop=32,
                  mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    rgb_raw = multiview_clips(video, normalize=False, **kwargs)
    bgr_raw = multiview_clips(video, normalize=False, channel_order="BGR", **kwargs)
    np.testing.assert_array_equal(rgb_raw, bgr_raw)
    bgr = multiview_clips(video, channel_order="BGR", **kwargs)
    expected = (rgb_raw[..., ::-1].astype(np.float64) - np.array((10.0, 20.0, 30.0))) / np.array((2.0, 4.0, 8.0))
    np.testing.assert_allclose(bgr, expected, atol=1e-5)
