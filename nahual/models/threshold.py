"""The ``threshold`` model: classical nuclei segmentation with scikit-image.

Layer: model zoo. Pipeline, in order (each step a param):

1. pick one channel (``channel``) of a ``cyx``/``czyx`` image (``yx``/``zyx`` are taken as is);
2. Gaussian smoothing (``sigma``);
3. optional background subtraction (``background_radius``: a white top-hat, i.e. minus
   the grey opening by a square wider than any nucleus);
4. a threshold: a fixed value (``threshold``), a global method (``otsu``, ``li``,
   ``yen``, ``triangle``, ``isodata``, ``mean``) or ``local`` (``block_size``, ``offset``);
5. hole filling and removal of objects under ``min_size`` pixels;
6. a distance-transform watershed that splits touching nuclei, seeded by the
   maxima of the distance map at least ``min_distance`` apart (``split=False`` skips it);
7. objects over ``max_size`` pixels are dropped; labels are renumbered 1..n.

Output: ``{"labels": uint32 array}`` over the spatial axes of the input.
Global thresholds are computed on what the model receives: when the streaming
layer sends tiles, pass a fixed ``threshold`` (or use ``local``) so that every
tile is cut at the same level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ContractError
from ..model import Contract, Model, Param

__all__ = ["Threshold"]

GLOBAL_METHODS = ("otsu", "li", "yen", "triangle", "isodata", "mean")


class Threshold(Model):
    """Smooth, threshold, fill holes, filter by size and split touching nuclei by watershed."""

    name = "threshold"
    packages = ("scikit-image", "scipy", "numpy")
    contract = Contract(
        axes=("cyx", "czyx", "yx", "zyx"),
        inputs=("image",),
        dtype="float32",
        channels=1,
        output="labels",
        tiling=True,
        halo=32,
    )
    # Defaults tuned for fluorescence nuclei of 5-15 px radius.
    param_spec = (
        Param("channel", 0, "index of the nuclear channel in a c axis", min=0),
        Param("sigma", 1.0, "Gaussian smoothing in pixels, 0 for none", min=0),
        Param(
            "background_radius",
            0,
            "half-width in pixels of the window that sees only background (a white top-hat); "
            "wider than a nucleus, 0 for none",
            min=0,
        ),
        Param("method", "otsu", "threshold method", choices=(*GLOBAL_METHODS, "local")),
        Param("threshold", None, "fixed threshold on the smoothed image; overrides method", type=float),
        Param("block_size", 51, "odd window of the local threshold in pixels", min=3),
        Param("offset", 0.0, "subtracted from the local threshold"),
        Param("fill_holes", True, "fill holes inside objects"),
        Param("min_size", 30, "smallest object kept, in pixels", min=0),
        Param("max_size", None, "largest object kept, in pixels; null for no limit", type=int, min=0),
        Param("split", True, "split touching objects by distance-transform watershed"),
        Param("min_distance", 5, "least distance in pixels between two seeds of the watershed", min=1),
    )

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, np.ndarray]:
        """Segment one frame (or tile); ``params`` override the load params for this call."""
        p = self.merge_params(params, self.params)
        arrays, axes = self.contract.read_payload(payload)
        return {"labels": segment(_nuclear_channel(arrays["image"], axes, p["channel"]), p)}


def _nuclear_channel(image: np.ndarray, axes: str, channel: int) -> np.ndarray:
    """The spatial array of the chosen channel, as float32."""
    if "c" in axes:
        if not 0 <= channel < image.shape[0]:
            raise ContractError(f"threshold: channel {channel} asked, the image has {image.shape[0]} channel(s)")
        image = image[channel]
    return image.astype(np.float32, copy=False)


def segment(image: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Run the pipeline on one spatial array (2-D or 3-D); returns uint32 labels."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(image, p["sigma"]) if p["sigma"] else image
    if p["background_radius"]:
        smooth = smooth - ndimage.grey_opening(smooth, size=(2 * int(p["background_radius"]) + 1,) * smooth.ndim)
    mask = smooth > _level(smooth, p)
    if p["fill_holes"]:
        mask = ndimage.binary_fill_holes(mask)
    mask = _drop_small(mask, p["min_size"])
    labels = _split(mask, p["min_distance"]) if p["split"] else ndimage.label(mask)[0]
    return _filter_sizes(labels, p["min_size"], p["max_size"])


def _level(smooth: np.ndarray, p: dict[str, Any]) -> np.ndarray | float:
    """The threshold: fixed, global (one number) or local (an array)."""
    from skimage import filters

    if p["threshold"] is not None:
        return float(p["threshold"])
    if p["method"] == "local":
        return filters.threshold_local(smooth, block_size=int(p["block_size"]) | 1, offset=p["offset"])
    if np.ptp(smooth) == 0:
        return float(smooth.flat[0])  # a flat image holds no object
    return float(getattr(filters, f"threshold_{p['method']}")(smooth))


def _drop_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without connected components under ``min_size`` pixels."""
    from scipy import ndimage

    components, _ = ndimage.label(mask)
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[components]


def _split(mask: np.ndarray, min_distance: int) -> np.ndarray:
    """Watershed on the distance transform; components without a seed keep one label."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    components, _ = ndimage.label(mask)
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask), 1.0)
    peaks = peak_local_max(distance, min_distance=max(int(min_distance), 1), labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    orphans = mask & (labels == 0)  # components where no seed was found
    labels[orphans] = components[orphans] + len(peaks)
    return labels


def _filter_sizes(labels: np.ndarray, min_size: int, max_size: int | None) -> np.ndarray:
    """Drop objects outside [min_size, max_size] and renumber the rest 1..n, as uint32."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    if max_size is not None:
        keep &= sizes <= max_size
    keep[0] = False
    lookup = np.zeros(sizes.size, np.uint32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lookup[labels]
