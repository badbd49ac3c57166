"""Tests of the ``regionprops`` model, in process: values equal scikit-image's, series, errors."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops

from nahual.demo import make_demo
from nahual.errors import ContractError
from nahual.models.regionprops import RegionProps
from nahual.testing import ModelTests

SHAPE = ("eccentricity", "solidity", "extent", "perimeter", "orientation", "axis_major_length", "axis_minor_length")


@pytest.fixture(scope="module")
def scene():
    return make_demo(seed=2)


@pytest.fixture(scope="module")
def model() -> RegionProps:
    instance = RegionProps()
    instance.load()
    return instance


def test_values_equal_scikit_image_regionprops_computed_directly(model, scene):
    image, labels = scene.image[5], scene.labels[5]
    table = model.process({"image": image, "labels": labels, "axes": "cyx"})["table"]
    regions = regionprops(labels.astype(np.int64))
    assert table["label"].tolist() == [r.label for r in regions]
    for row, region in enumerate(regions):
        assert table["area"][row] == region.area
        assert (table["centroid_y"][row], table["centroid_x"][row]) == pytest.approx(region.centroid)
        box = tuple(table[f"bbox_{ax}_{end}"][row] for end in ("min", "max") for ax in "yx")
        assert box == region.bbox
        for name in SHAPE:
            assert table[name][row] == pytest.approx(getattr(region, name)), name
        for c in range(image.shape[0]):
            pixels = image[c][labels == region.label].astype(float)
            assert table[f"intensity_mean_c{c}"][row] == pytest.approx(pixels.mean())
            assert table[f"intensity_min_c{c}"][row] == pixels.min()
            assert table[f"intensity_max_c{c}"][row] == pixels.max()
            assert table[f"intensity_std_c{c}"][row] == pytest.approx(pixels.std())


def test_a_series_adds_t_and_equals_frame_by_frame_calls(model, scene):
    series = model.process({"image": scene.image, "labels": scene.labels, "axes": "tcyx"})["table"]
    assert list(series)[:2] == ["t", "label"]
    for t in (0, 7):
        frame = model.process({"image": scene.image[t], "labels": scene.labels[t], "axes": "cyx"})["table"]
        rows = series["t"] == t
        for key, values in frame.items():
            assert np.array_equal(series[key][rows], values), key
    assert len(series["t"]) == len(scene.nodes["id"])


def test_3d_objects_get_z_columns_and_3d_shape_descriptors(model):
    labels = np.zeros((8, 16, 16), np.uint32)
    labels[2:5, 3:9, 4:12] = 3
    image = np.stack([labels * 10.0, np.ones_like(labels, float)])
    table = model.process({"image": image, "labels": labels, "axes": "czyx"})["table"]
    assert table["label"].tolist() == [3] and table["area"][0] == 3 * 6 * 8
    assert (table["centroid_z"][0], table["centroid_y"][0], table["centroid_x"][0]) == pytest.approx((3, 5.5, 7.5))
    assert table["bbox_z_min"][0] == 2 and table["bbox_z_max"][0] == 5
    assert table["solidity"][0] == pytest.approx(1.0) and "eccentricity" not in table
    assert table["intensity_mean_c0"][0] == 30.0 and table["intensity_std_c1"][0] == 0.0


def test_channel_names_spacing_and_switches(model, scene):
    image, labels = scene.image[0], scene.labels[0]
    plain = model.process({"image": image, "labels": labels, "axes": "cyx"})["table"]
    named = model.process({"image": image, "labels": labels, "axes": "cyx"}, channel_names=["dna", "cyto"])["table"]
    assert np.array_equal(named["intensity_max_cyto"], plain["intensity_max_c1"])
    scaled = model.process({"image": image, "labels": labels, "axes": "cyx"}, spacing=(0.5, 0.5))["table"]
    assert np.allclose(scaled["area"], plain["area"] * 0.25)
    bare = model.process({"image": image, "labels": labels, "axes": "cyx"}, shape=False, intensity=False)["table"]
    assert sorted(bare) == sorted(
        ["label", "area", "centroid_y", "centroid_x", "bbox_y_min", "bbox_x_min", "bbox_y_max", "bbox_x_max"]
    )


def test_an_image_without_objects_gives_an_empty_table(model):
    table = model.process({"image": np.ones((2, 8, 8)), "labels": np.zeros((8, 8), np.uint32), "axes": "cyx"})["table"]
    assert len(table["label"]) == 0 and "intensity_mean_c1" in table


class TestRegionProps(ModelTests):
    model_class = RegionProps

    def make_payload(self) -> dict:
        labels = np.zeros((16, 16), np.uint32)
        labels[2:6, 3:9], labels[9:14, 8:15] = 1, 2
        return {"image": np.stack([labels * 5.0, np.ones((16, 16))]), "labels": labels, "axes": "cyx"}


@pytest.mark.parametrize(
    ("payload", "params", "message"),
    [
        ({"image": np.ones((2, 8, 8)), "labels": np.zeros((8, 8), np.float32), "axes": "cyx"}, {}, "integer labels"),
        (
            {"image": np.ones((2, 8, 8)), "labels": np.zeros((8, 8), np.uint32), "axes": "cyx"},
            {"channel_names": ["a"]},
            "1 channel_names for an image with 2",
        ),
        (
            {"image": np.ones((0, 2, 8, 8)), "labels": np.zeros((0, 8, 8), np.uint32), "axes": "tcyx"},
            {},
            "the t axis is empty",
        ),
    ],
)
def test_wrong_input_names_what_was_expected(model, payload, params, message):
    with pytest.raises(ContractError, match=message):
        model.process(payload, **params)
