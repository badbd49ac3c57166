"""What an embedding model sees: object, tile and frame crops of a ``cyx`` image, normalised, as 3-channel views.

Layer: model zoo support (numpy only), shared by the embedding adapters (DINOv2, DINOv3). It is
independent of torch so that what the model is shown can be tested, and reasoned about, on its own.

Crop geometry: a box is ``(y_min, x_min, y_max, x_max)``, half-open, in the frame's pixel coordinates.
A box may reach past the frame; the part outside is zero in the crop's pixels.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ContractError, ParamError

__all__ = ["Crops", "channel_views", "frame_crop", "normalize", "object_crops", "tile_crops"]

NORMALIZE_METHODS = ("percentile", "zscore", "none")
BACKGROUNDS = ("keep", "mask")


@dataclass(frozen=True)
class Crops:
    """Crops of one frame, in the order the model should see them.

    Attributes
    ----------
    pixels : list of numpy.ndarray
        One ``(c, h, w)`` float32 array per crop.
    boxes : numpy.ndarray
        ``(n, 4)`` int64: ``y_min, x_min, y_max, x_max`` of each crop, half-open, possibly past the frame.
    labels : numpy.ndarray
        ``(n,)`` int64: the object's label; 0 for tiles and frames.
    """

    pixels: list[np.ndarray]
    boxes: np.ndarray
    labels: np.ndarray


def object_crops(
    image: Any, labels: Any, *, size: int | None = None, scale: float = 1.5, background: str = "keep"
) -> Crops:
    """One square crop per object of ``labels``, centred on the object's bounding box.

    The centre pixel of a bounding box of side ``h`` is its pixel ``h // 2`` (for an even side, the later of the
    two middle pixels); a crop of side ``s`` puts it at its own pixel ``s // 2``, in y and in x.

    Parameters
    ----------
    image, labels : array_like
        ``(c, y, x)``, already normalised if it should be; ``(y, x)`` of any integer dtype, 0 for background.
    size : int, optional
        The side of every crop. None: ``ceil(scale * max(bbox h, bbox w))`` per object, at least 1.
    scale : float
        The context around the object when ``size`` is None (1.5: a quarter of the bbox side each way).
    background : {"keep", "mask"}
        ``"mask"`` zeroes every pixel of a crop not of its object (neighbours included).

    Returns
    -------
    Crops
        In ascending label order; none for a frame without objects.

    Raises
    ------
    ContractError
        When the image is not ``(c, y, x)``, or the labels not ``(y, x)`` integers >= 0 of the same y and x.
    ParamError
        For a size under 1, a scale not above 0, or an unknown background.
    """
    image = _checked_image(image)
    labels = _checked_labels(labels, image.shape[1:])
    if size is not None and not (_is_int(size) and size >= 1):
        raise ParamError(f"crop size must be an integer >= 1 or None, found {size!r}")
    if not (isinstance(scale, numbers.Real) and math.isfinite(scale) and scale > 0):
        raise ParamError(f"crop scale must be a number > 0, found {scale!r}")
    if background not in BACKGROUNDS:
        raise ParamError(f"background must be one of {BACKGROUNDS}, found {background!r}")
    present, low, high = _bounding_boxes(labels)
    boxes = _square_boxes(low, high, size, scale)
    pixels = [_padded(image, box) for box in boxes]
    if background == "mask":
        for crop, box, label in zip(pixels, boxes, present):
            crop[:, _padded(labels[None], box, labels.dtype)[0] != label] = 0
    return Crops(pixels, boxes, present.astype(np.int64))


def tile_crops(image: Any, tile: int) -> Crops:
    """A grid of ``tile`` x ``tile`` squares from ``(0, 0)``, row-major; edge tiles zero-padded past the frame.

    Raises
    ------
    ContractError
        When the image is not ``(c, y, x)``.
    ParamError
        For a tile side under 1.
    """
    image = _checked_image(image)
    if not (_is_int(tile) and tile >= 1):
        raise ParamError(f"tile size must be an integer >= 1, found {tile!r}")
    height, width = image.shape[1:]
    ys, xs = np.meshgrid(np.arange(0, height, tile), np.arange(0, width, tile), indexing="ij")
    starts = np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.int64)
    boxes = np.concatenate([starts, starts + tile], axis=1)
    return Crops([_padded(image, box) for box in boxes], boxes, np.zeros(len(boxes), np.int64))


def frame_crop(image: Any) -> Crops:
    """The whole frame as one crop: box ``(0, 0, h, w)``, label 0.

    Raises
    ------
    ContractError
        When the image is not ``(c, y, x)``.
    """
    image = _checked_image(image)
    box = np.array([[0, 0, *image.shape[1:]]], np.int64)
    return Crops([image.astype(np.float32)], box, np.zeros(1, np.int64))


def normalize(image: Any, method: str = "percentile", low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Each channel (axis 0) of a ``(c, ...)`` array rescaled on its own, in float64, returned as float32.

    ``"percentile"`` maps the ``low`` and ``high`` percentiles to 0 and 1 (no clipping; a channel whose two
    percentiles coincide, as a constant one, gives zeros); ``"zscore"`` gives ``(x - mean) / std`` (zeros when
    std is 0); ``"none"`` only casts to float32.

    Raises
    ------
    ContractError
        For a 0-d array (no channel axis).
    ParamError
        For an unknown method, or percentiles not ``0 <= low < high <= 100``.
    """
    image = np.asarray(image)
    if method not in NORMALIZE_METHODS:
        raise ParamError(f"normalize must be one of {NORMALIZE_METHODS}, found {method!r}")
    if method == "percentile" and not 0 <= low < high <= 100:
        raise ParamError(f"percentiles must satisfy 0 <= low < high <= 100, found low={low!r} high={high!r}")
    if image.ndim < 1:
        raise ContractError(f"normalize needs a (c, ...) array, found a 0-d array of shape {image.shape}")
    if method == "none" or image.size == 0:
        return image.astype(np.float32)
    out = np.zeros(image.shape, np.float32)
    for index, channel in enumerate(image):
        values = channel.astype(np.float64)
        if method == "percentile":
            offset, top = np.percentile(values, [low, high])
            spread = top - offset
        else:
            offset, spread = values.mean(), values.std()
        if spread > 0:
            out[index] = (values - offset) / spread
    return out


def channel_views(crop: Any, channels: str | list[int] = "each") -> np.ndarray:
    """The 3-channel views of a ``(c, h, w)`` crop, as ``(v, 3, h, w)``.

    ``"each"``: one view per channel, that channel replicated 3 times (v = c); ``"triplets"``: channels 0-2, 3-5,
    ... (v = c / 3); a list of 3 channel indices: one view of those channels, in that order.

    Raises
    ------
    ContractError
        When the crop is not 3-d, c is not a multiple of 3 for triplets, or an index is not in ``0..c-1``.
    ParamError
        For an unknown mode, or a list that is not 3 integers.
    """
    crop = np.asarray(crop)
    if crop.ndim != 3:
        raise ContractError(f"channel views need a (c, h, w) crop, found shape {crop.shape}")
    count = crop.shape[0]
    if channels == "each":
        index = np.repeat(np.arange(count), 3)
    elif channels == "triplets":
        if count % 3:
            raise ContractError(f"channels 'triplets' needs c to be a multiple of 3, found c={count}")
        index = np.arange(count)
    elif isinstance(channels, list | tuple) and len(channels) == 3 and all(_is_int(i) for i in channels):
        if not all(0 <= i < count for i in channels):
            raise ContractError(f"channels {list(channels)} asked for, but the crop has c={count} (0..{count - 1})")
        index = np.array(channels)
    else:
        raise ParamError(f"channels must be 'each', 'triplets' or a list of 3 channel indices, found {channels!r}")
    return crop[index].reshape(-1, 3, *crop.shape[1:])


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _checked_image(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ContractError(f"image must be (c, y, x), found shape {image.shape}")
    return image


def _checked_labels(labels: Any, shape: tuple[int, ...]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != shape:
        raise ContractError(f"labels must be (y, x) = {shape} like the image, found shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ContractError(f"labels must be of an integer dtype, found {labels.dtype}")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ContractError(f"labels must be >= 0, found {labels.min()}")
    return labels


def _bounding_boxes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labels present (ascending) and their bboxes' ``(y, x)`` minima and half-open maxima, in one pass."""
    flat = labels.ravel()
    foreground = np.flatnonzero(flat)
    present, which = np.unique(flat[foreground], return_inverse=True)
    low = np.full((2, len(present)), np.iinfo(np.int64).max, np.int64)
    high = np.full((2, len(present)), -1, np.int64)
    # One 1-d ufunc.at per coordinate: numpy's fast path (a 2-d one is several times slower).
    for axis, where in enumerate(np.divmod(foreground, labels.shape[1])):
        np.minimum.at(low[axis], which, where)
        np.maximum.at(high[axis], which, where)
    return present, low.T, high.T + 1


def _square_boxes(low: np.ndarray, high: np.ndarray, size: int | None, scale: float) -> np.ndarray:
    """Square ``(n, 4)`` boxes whose pixel ``side // 2`` is the bbox's pixel ``h // 2``, in y and in x."""
    if size is None:
        # Rounded before ceil so that 1.1 * 50 gives 55, not 56.
        sides = np.maximum(1, np.ceil(np.round(scale * np.max(high - low, axis=1), 6))).astype(np.int64)
    else:
        sides = np.full(len(low), size, np.int64)
    starts = low + (high - low) // 2 - (sides // 2)[:, None]
    return np.concatenate([starts, starts + sides[:, None]], axis=1)


def _padded(image: np.ndarray, box: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """The ``(c, h, w)`` crop of ``image`` at ``box`` (float32 unless told); zero where the box is past the frame."""
    y_min, x_min, y_max, x_max = (int(v) for v in box)
    crop = np.zeros((image.shape[0], y_max - y_min, x_max - x_min), dtype)
    top, left = max(y_min, 0), max(x_min, 0)
    bottom, right = min(y_max, image.shape[1]), min(x_max, image.shape[2])
    if bottom > top and right > left:
        crop[:, top - y_min : bottom - y_min, left - x_min : right - x_min] = image[:, top:bottom, left:right]
    return crop
