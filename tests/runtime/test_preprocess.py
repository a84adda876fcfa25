from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from runtime.errors import MobileVLAError
from runtime.preprocess import CLIP_MEAN, CLIP_STD, Preprocessing, model_channel_indices, normalize_frame, prepare_frame


def frame_720p(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (720, 1280, 3), dtype=np.uint8)


@pytest.mark.parametrize("resize", ["bilinear", "bicubic"])
def test_resize_is_pil_with_its_antialiasing(resize: str) -> None:
    image = frame_720p()
    pre = Preprocessing(resize=resize, frame_format="RGB")
    want = np.asarray(Image.fromarray(image).resize((224, 224), getattr(Image.Resampling, resize.upper())))
    np.testing.assert_array_equal(prepare_frame(image, "rgb", pre), want)
    # PIL antialiases when shrinking: a naive subsample of the same image differs a lot.
    naive = image[:: 720 // 224 + 1, :: 1280 // 224 + 1][:224, :224]
    assert np.abs(want[: naive.shape[0], : naive.shape[1]].astype(int) - naive).mean() > 20


def test_bgr_recording_into_bgr_trained_model_is_passed_through_unchanged() -> None:
    """The recorder stored bgr8 and training fed those arrays as-is: the model's slot 0 holds stored channel 0."""
    stored = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    pre = Preprocessing(color_order="bgr", frame_format="RGBA")
    frame = prepare_frame(stored, "bgr", pre)
    assert frame.shape == (224, 224, 4) and (frame[..., 3] == 255).all()
    picked = frame[..., list(model_channel_indices(pre))]
    np.testing.assert_array_equal(picked, stored)


def test_rgb_model_gets_true_rgb_from_any_frame_format() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    for fmt in ("RGB", "BGR", "RGBA", "BGRA"):
        pre = Preprocessing(color_order="rgb", frame_format=fmt)
        frame = prepare_frame(rgb[..., ::-1].copy(), "bgr", pre)
        np.testing.assert_array_equal(frame[..., list(model_channel_indices(pre))], rgb)


def test_normalize_frame_is_clip_normalization() -> None:
    frame = np.zeros((224, 224, 4), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 255, 0, 128
    out = normalize_frame(frame, Preprocessing())
    assert out.shape == (1, 3, 224, 224) and out.dtype == np.float32
    expected = [(1.0 - CLIP_MEAN[0]) / CLIP_STD[0], (0.0 - CLIP_MEAN[1]) / CLIP_STD[1],
                (128 / 255 - CLIP_MEAN[2]) / CLIP_STD[2]]
    np.testing.assert_allclose(out[0, :, 5, 7], expected, rtol=1e-6)


def test_bad_frames_and_settings_are_explained() -> None:
    with pytest.raises(MobileVLAError, match=r"uint8 array of shape \(H, W, 3\); got float32 \(10, 10, 3\)"):
        prepare_frame(np.zeros((10, 10, 3), np.float32), "rgb", Preprocessing())
    with pytest.raises(MobileVLAError, match=r"unknown resize 'nearest'; expected one of bilinear, bicubic"):
        Preprocessing(resize="nearest")
    with pytest.raises(MobileVLAError, match=r"unknown color_order 'rbg'"):
        Preprocessing(color_order="rbg")
