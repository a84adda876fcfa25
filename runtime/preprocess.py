"""The frame preprocessing contract, defined once for every side (docs/design.md §2.1, §3).

Two stages:
1. Host side (`prepare_frame`): a camera/recorded image of any size -> the uint8 `(S, S, C)` frame the vision graph
   takes, resized with PIL exactly as training did (PIL antialiases when it shrinks) and laid out in the bundle's
   `frame_format`. On the robot the VIC does this stage in hardware (issue 4).
2. In the vision graph (`normalize_frame` is its NumPy reference): pick the three channels in the order the model
   was trained on (`color_order`), /255, CLIP mean/std, NCHW.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from runtime.errors import MobileVLAError, range_problem

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
COLOR_ORDERS = ("rgb", "bgr")
FRAME_FORMATS = ("RGB", "BGR", "RGBA", "BGRA")
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class Preprocessing:
    """How a frame becomes model input; stored in the bundle manifest."""

    image_size: int = 224
    resize: str = "bilinear"  # PIL filter used in training
    color_order: str = "rgb"  # what the model saw in its R,G,B slots: true RGB, or BGR-as-RGB
    frame_format: str = "RGBA"  # the uint8 layout the vision graph takes (nvvidconv delivers RGBA)
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        check_choice("resize", self.resize, tuple(RESIZE_FILTERS))
        check_choice("color_order", self.color_order, COLOR_ORDERS)
        check_choice("frame_format", self.frame_format, FRAME_FORMATS)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise MobileVLAError(
                f"image_mean/image_std must have 3 values each, got {list(self.image_mean)} and "
                f"{list(self.image_std)}; fix the training config's image_mean/image_std"
            )

    def value_problems(self) -> list[str]:
        """What is out of range (empty when nothing is): image size, and the normalization's mean and std."""
        problems = normalization_problems(self.image_mean, self.image_std)
        if not 0 < self.image_size <= MAX_IMAGE_SIZE:
            problems.insert(0, f"image_size {self.image_size}: it must be in [1, {MAX_IMAGE_SIZE}]")
        return problems

    @property
    def channels(self) -> int:
        return len(self.frame_format)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "resize": self.resize,
            "color_order": self.color_order,
            "frame_format": self.frame_format,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        mean, std = data["image_mean"], data["image_std"]
        return cls(
            image_size=int(data["image_size"]),
            resize=str(data["resize"]),
            color_order=str(data["color_order"]),
            frame_format=str(data["frame_format"]),
            image_mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            image_std=(float(std[0]), float(std[1]), float(std[2])),
        )


def normalization_problems(mean: tuple[float, ...], std: tuple[float, ...]) -> list[str]:
    """Why `mean`/`std` cannot normalize pixels scaled to [0, 1] (empty when they can).

    The vision graph divides by 255 first, so a mean outside [0, 1] (e.g. 123.7: 0-255 units) or a std outside
    (0, 1] is a mistake; a std of 0 divides by zero and every image embed becomes NaN or inf.
    """
    problems = []
    for key, values, low_open in (("image_mean", mean, False), ("image_std", std, True)):
        for i, value in enumerate(values):
            problem = range_problem(value, 0.0, 1.0, low_open=low_open)
            if problem is not None:
                problems.append(f"{key}[{i}] = {value!r}: {problem} (pixels are normalized after /255)")
    return problems


def check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MobileVLAError(f"unknown {key} {value!r}; expected one of {', '.join(allowed)}")


def model_channel_indices(pre: Preprocessing) -> tuple[int, int, int]:
    """Indices into the frame's channels that fill the model's three input slots, in order."""
    wanted = "RGB" if pre.color_order == "rgb" else "BGR"
    return (
        pre.frame_format.index(wanted[0]),
        pre.frame_format.index(wanted[1]),
        pre.frame_format.index(wanted[2]),
    )


def prepare_frame(image: np.ndarray, source_order: str, pre: Preprocessing) -> np.ndarray:
    """An `(H, W, 3)` uint8 image whose channels are in `source_order` -> the vision graph's `(S, S, C)` frame."""
    check_choice("source colour order", source_order, COLOR_ORDERS)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise MobileVLAError(
            f"a frame must be a uint8 array of shape (H, W, 3); got {image.dtype} {tuple(image.shape)}"
        )
    size = (pre.image_size, pre.image_size)
    if image.shape[:2] != size[::-1]:
        # Resizing each channel is independent, so it commutes with the channel reordering below.
        image = np.asarray(Image.fromarray(image).resize(size, RESIZE_FILTERS[pre.resize]))
    out = np.empty((pre.image_size, pre.image_size, pre.channels), dtype=np.uint8)
    source = source_order.upper()
    for dst, letter in enumerate(pre.frame_format):
        out[..., dst] = 255 if letter == "A" else image[..., source.index(letter)]
    return out


def normalize_frame(frame: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """NumPy reference of the vision graph's input stage: `(S, S, C)` uint8 -> `(1, 3, S, S)` float32."""
    picked = frame[..., list(model_channel_indices(pre))].astype(np.float32) / np.float32(255.0)
    mean = np.asarray(pre.image_mean, dtype=np.float32)
    std = np.asarray(pre.image_std, dtype=np.float32)
    return ((picked - mean) / std).transpose(2, 0, 1)[None].copy()
