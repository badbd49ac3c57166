"""Small BABY model sets for tests, written inside the BABY environment (it needs TensorFlow and baby-seg).

    python tests/baby_env.py FOLDER [KIND...]    # FOLDER/KIND for each KIND (default: all three)

    tiny     deterministic: real cells, tracks and a bud assignment
    random   a seeded random U-Net: BABY's clogging check trips
    lambda   the tiny set whose network holds a Python lambda (Keras' safe mode refuses it)

Each FOLDER is a BABY model set as ``nahual weights add baby NAME FOLDER``
takes it: ``modelset.json`` naming a Keras HDF5 network, a flattener, the
segmentation parameters and three scikit-learn classifiers, the latter in
BABY's own pickle-free ``.npz`` format (``baby.utils.save_sklearn_model``).

The ``tiny`` network is hand-set from standard Keras layers (69 weights, no
custom objects): a 1x1 convolution averages the z-sections; every interior
target is ``sigmoid(20 (mean - 0.35))``, every edge target
``sigmoid(3 (|Sobel x| + |Sobel y|) - 6)`` and the bud neck is ~0, so after
BABY's normalisation a bright disk on a dark background is one cell. The
trackers link two cells of consecutive frames exactly when their centres are
closer than :data:`LINK_DISTANCE` (in BABY's normalised feature units); the
bud classifier says "mother of" exactly when the joining rectangle lies
mostly inside the two cells (adjacency above 0.6) and the mother is at least
1.5 times the bud's area. So the lineage of a series of disks is known.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

#: BABY's flattener targets: (name, group, property, erosions).
TARGETS = (
    ("lge_inte", "large", "interior", 2),
    ("lge_edge", "large", "edge", 0),
    ("mid_inte", "medium", "interior", 1),
    ("mid_edge", "medium", "edge", 0),
    ("sml_inte", "small", "filled", 0),
    ("sml_edge", "small", "edge", 0),
    ("bud_neck", "buds", "budneck", 0),
)
#: Tracker features: regionprops of each cell, plus the distance between the two compared.
TRACK_FEATURES = ("centroid", "area", "minor_axis_length", "major_axis_length", "bbox_area", "perimeter")
#: Cells of consecutive frames closer than this (normalised centroid units: pixels / pixel size) are one cell.
LINK_DISTANCE = 10.0
#: The pixel size (um) the sets are made for, as BABY's own 60x sets.
PIXEL_SIZE = 0.263
#: z-sections the networks take.
DEPTH = 5
#: The model sets this helper writes.
KINDS = ("tiny", "random", "lambda")


def budding_series(frames: int = 7, size: int = 128, zoom: int = 1, seed: int = 0) -> np.ndarray:
    """A brightfield-like (t, z, y, x) float32 series the ``tiny`` set reads exactly (numpy only).

    A mother (r=16 px) and a lone cell (r=12 px) drift 1 px a frame; from
    frame 2 a bud grows on the mother (r=6, 7, ...), 2 px from her edge. So
    BABY finds labels 1 and 2, then 3 from frame 2, and assigns 3 to 1 once it
    has been there three frames. ``zoom`` scales every length (for a pixel
    size ``zoom`` times smaller); z-sections differ only by their noise.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size * zoom, : size * zoom] / zoom
    series = np.zeros((frames, DEPTH, size * zoom, size * zoom), np.float32)
    for t in range(frames):
        cells = np.zeros(yy.shape, bool)
        cells |= (yy - 45) ** 2 + (xx - 40 - t) ** 2 <= 16**2
        cells |= (yy - 95) ** 2 + (xx - 90 - t) ** 2 <= 12**2
        if t >= 2:
            radius = 4 + t
            cells |= (yy - 45 - 18 - radius) ** 2 + (xx - 40 - t) ** 2 <= radius**2
        series[t] = cells + rng.normal(0, 0.05, series.shape[1:])
    return series


def flattener(folder: Path) -> str:
    """BABY's size groups and targets, saved as JSON; returns the file name."""
    from baby.preprocessing import SegmentationFlattening

    flat = SegmentationFlattening()
    flat.addGroup("small", upper=200)
    flat.addGroup("medium", lower=150, upper=600)
    flat.addGroup("large", lower=500)
    flat.addGroup("buds", upper=200, budonly=True)
    for name, group, prop, erode in TARGETS:
        flat.addTarget(name, group, prop, nerode=erode)
    flat.save(folder / "flattener.json")
    return "flattener.json"


def tiny_network(with_lambda: bool = False):
    """The hand-set network (see the module docstring); ``with_lambda`` adds a Python lambda layer."""
    from tensorflow.keras import Input, Model, layers

    image = Input(shape=(64, 64, DEPTH))
    mean = layers.Conv2D(1, 1, name="zmean")(image)
    if with_lambda:
        mean = layers.Lambda(lambda x: x * 1.0, name="identity")(mean)
    sobel = layers.Conv2D(4, 3, padding="same", activation="relu", name="sobel")(mean)
    interior = layers.Conv2D(1, 1, activation="sigmoid", name="interior")(mean)
    edge = layers.Conv2D(1, 1, activation="sigmoid", name="edge")(sobel)
    outputs = []
    for name, _group, prop, _erode in TARGETS:
        source = {"interior": interior, "filled": interior, "edge": edge, "budneck": mean}[prop]
        if prop == "budneck":
            source = layers.Conv2D(1, 1, activation="sigmoid", name="budneck")(mean)
        outputs.append(layers.Activation("linear", name=name)(source))
    model = Model(image, outputs)
    sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    kernels = np.stack([sx, -sx, sx.T, -sx.T], axis=-1)[:, :, None, :]
    model.get_layer("zmean").set_weights([np.full((1, 1, DEPTH, 1), 1 / DEPTH, np.float32), np.zeros(1)])
    model.get_layer("sobel").set_weights([kernels, np.zeros(4, np.float32)])
    model.get_layer("interior").set_weights([np.full((1, 1, 1, 1), 20.0, np.float32), np.array([-7.0])])
    model.get_layer("edge").set_weights([np.full((1, 1, 4, 1), 3.0, np.float32), np.array([-6.0])])
    model.get_layer("budneck").set_weights([np.zeros((1, 1, 1, 1), np.float32), np.array([-10.0])])
    return model


def random_network():
    """A small U-Net of BABY's own layers with seeded random weights: every target map sits near 0.5."""
    import tensorflow as tf
    from baby.layers import make_outputs, unet_block
    from tensorflow.keras import Input, Model

    tf.keras.utils.set_random_seed(0)
    image = Input(shape=(64, 64, DEPTH))
    return Model(image, make_outputs(unet_block(image, [4, 8, 16], batchnorm=True), [t[0] for t in TARGETS]))


def forest(features: np.ndarray, truth: np.ndarray, seed: int):
    """A random forest fitted to ``truth``, deterministic for the seed."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=10, max_depth=6, random_state=seed).fit(features, truth)


def trackers(folder: Path) -> tuple[str, str]:
    """The main and backup cell trackers: same cell when the distance is below :data:`LINK_DISTANCE`."""
    from baby.utils import save_sklearn_model
    from skimage.measure import regionprops_table

    extra = ("distance",)
    all_ofeats = tuple(regionprops_table(np.diag((1, 0)), properties=TRACK_FEATURES).keys()) + extra
    rng = np.random.default_rng(0)
    names = []
    for name, seed in (("ctrack.npz", 1), ("ctrack_bak.npz", 2)):
        features = rng.normal(0, 20, (4000, len(all_ofeats)))
        features[:, -1] = rng.uniform(0, 6 * LINK_DISTANCE, 4000)
        model = forest(features, features[:, -1] < LINK_DISTANCE, seed)
        model.all_ofeats = all_ofeats
        model.all_ifeats = [TRACK_FEATURES, (), extra]
        save_sklearn_model(model, folder / name)
        names.append(name)
    return names[0], names[1]


def bud_assigner(folder: Path) -> str:
    """The bud classifier on BABY's 5 pair features (p_bud, size ratio, p_budneck, budneck ratio, adjacency)."""
    from baby.utils import save_sklearn_model

    rng = np.random.default_rng(3)
    count = 4000
    features = np.column_stack(
        [
            rng.uniform(0, 1, count),
            np.exp(rng.uniform(-3, 3, count)),
            rng.uniform(0, 1, count) * (rng.uniform(size=count) < 0.5),
            rng.uniform(0, 1, count) * (rng.uniform(size=count) < 0.5),
            rng.uniform(0, 1, count),
        ]
    )
    truth = (features[:, 4] > 0.6) & (features[:, 1] > 1.5)
    save_sklearn_model(forest(features, truth, 4), folder / "budassign.npz")
    return "budassign.npz"


def write_modelset(folder: Path, kind: str) -> Path:
    """Write the model set ``kind`` (tiny, random or lambda) into ``folder``; returns it."""
    from baby.losses import bce_dice_loss, dice_coeff
    from baby.morph_thresh_seg import SegmentationParameters
    from baby.utils import jsonify

    folder.mkdir(parents=True, exist_ok=True)
    model = random_network() if kind == "random" else tiny_network(with_lambda=kind == "lambda")
    model.compile(optimizer="adam", loss=bce_dice_loss, metrics=[dice_coeff])
    model.save(folder / "morph.hdf5")
    (folder / "params.json").write_text(json.dumps(jsonify(SegmentationParameters())))
    ctrack, ctrack_bak = trackers(folder)
    brain_params = {
        "morph_model_file": "morph.hdf5",
        "flattener_file": flattener(folder),
        "params": "params.json",
        "celltrack_model_file": ctrack,
        "celltrack_backup_model_file": ctrack_bak,
        "budassign_model_file": bud_assigner(folder),
        "pixel_size": PIXEL_SIZE,
    }
    meta = {"z_sections": DEPTH, "pixel_size": PIXEL_SIZE}
    (folder / "modelset.json").write_text(json.dumps({"name": f"nahual test ({kind})", "meta": meta,
                                                      "brain_params": brain_params}))  # fmt: skip
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("kinds", nargs="*", metavar="KIND", help=f"of {', '.join(KINDS)} (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    for kind in args.kinds or KINDS:
        print(write_modelset(args.folder / kind, kind))


if __name__ == "__main__":
    main()
