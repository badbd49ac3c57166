"""Tests of the ``threshold`` model, in process: quality on demo data, params, contract errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import object_f1

from nahual.demo import make_demo
from nahual.errors import ContractError, ParamError
from nahual.models.threshold import Threshold
from nahual.testing import ModelTests


def disks(shape: tuple[int, ...], centres: list[tuple[int, ...]], radius: float) -> np.ndarray:
    """Bright balls (disks in 2-D) of one radius on a dark background, float32."""
    grid = np.indices(shape)
    image = np.zeros(shape, np.float32)
    for centre in centres:
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        image[distance <= radius] = 100.0
    return image


@pytest.fixture(scope="module")
def model() -> Threshold:
    instance = Threshold()
    instance.load()
    return instance


@pytest.mark.parametrize("seed", [0, 1])
def test_object_f1_on_demo_data_is_at_least_0_9(model, seed):
    data = make_demo(seed=seed)
    scores = [
        object_f1(truth, model.process({"image": frame, "axes": "cyx"})["labels"])
        for frame, truth in zip(data.image, data.labels)
    ]
    assert np.mean(scores) >= 0.9 and min(scores) >= 0.8


def test_output_is_uint32_labels_numbered_from_one_over_the_spatial_axes(model):
    image = disks((2, 64, 80), [], 0)
    image[0] = disks((64, 80), [(20, 20), (40, 60)], 8)
    labels = model.process({"image": image, "axes": "cyx"})["labels"]
    assert labels.dtype == np.uint32 and labels.shape == (64, 80)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]


def test_touching_nuclei_are_split_and_splitting_can_be_turned_off(model):
    image = disks((64, 64), [(32, 22), (32, 41)], 10)
    assert len(np.unique(model.process({"image": image, "axes": "yx"})["labels"])) == 3
    assert len(np.unique(model.process({"image": image, "axes": "yx"}, split=False)["labels"])) == 2


def test_touching_balls_in_3d_are_split(model):
    image = disks((24, 48, 48), [(12, 24, 14), (12, 24, 33)], 10)
    labels = model.process({"image": image, "axes": "zyx"})["labels"]
    assert labels.shape == (24, 48, 48) and labels.max() == 2


def test_channel_param_picks_the_channel(model):
    image = np.stack([disks((64, 64), [(20, 20)], 8), disks((64, 64), [(20, 20), (45, 45)], 8)])
    assert model.process({"image": image, "axes": "cyx"})["labels"].max() == 1
    assert model.process({"image": image, "axes": "cyx"}, channel=1)["labels"].max() == 2
    with pytest.raises(ContractError, match="channel 2 asked, the image has 2"):
        model.process({"image": image, "axes": "cyx"}, channel=2)


def test_size_filter_drops_small_and_large_objects(model):
    image = disks((96, 96), [(20, 20)], 3) + disks((96, 96), [(60, 60)], 15) + disks((96, 96), [(20, 70)], 8)
    labels = model.process({"image": image, "axes": "yx"}, min_size=50, max_size=400)["labels"]
    assert labels.max() == 1 and labels[20, 70] == 1


def test_holes_are_filled(model):
    image = disks((64, 64), [(32, 32)], 12) - disks((64, 64), [(32, 32)], 4)
    assert model.process({"image": image, "axes": "yx"})["labels"][32, 32] == 1
    assert model.process({"image": image, "axes": "yx"}, fill_holes=False, split=False)["labels"][32, 32] == 0


def test_local_threshold_and_background_subtraction_handle_a_steep_gradient(model):
    ramp = np.linspace(0, 200, 128, dtype=np.float32)[None, :].repeat(128, 0)
    image = ramp + disks((128, 128), [(30, 20), (30, 100), (90, 60)], 7)
    assert model.process({"image": image, "axes": "yx"})["labels"].max() != 3  # global Otsu fails here
    local = model.process({"image": image, "axes": "yx"}, method="local", block_size=41, offset=-10)["labels"]
    subtracted = model.process({"image": image, "axes": "yx"}, background_radius=15)["labels"]
    assert local.max() == 3 and subtracted.max() == 3


def test_a_blank_frame_gives_no_objects(model):
    labels = model.process({"image": np.full((32, 32), 7, np.float32), "axes": "yx"})["labels"]
    assert labels.dtype == np.uint32 and labels.max() == 0


def test_with_a_fixed_threshold_a_tile_with_the_declared_halo_reproduces_whole_frame_objects(model):
    data = make_demo(seed=0)
    frame = data.image[3, 0].astype(np.float32)
    level = {"threshold": float(np.percentile(frame, 90))}
    whole = model.process({"image": frame, "axes": "yx"}, **level)["labels"]
    halo = Threshold.contract.halo
    inner = (slice(64, 192), slice(64, 192))
    outer = tuple(slice(s.start - halo, s.stop + halo) for s in inner)
    tile = model.process({"image": frame[outer], "axes": "yx"}, **level)["labels"][halo:-halo, halo:-halo]
    checked = 0
    for label in np.unique(whole[inner]):
        ys, xs = np.nonzero(whole == label)
        if label == 0 or ys.min() < 64 or ys.max() >= 192 or xs.min() < 64 or xs.max() >= 192:
            continue  # only objects wholly inside the tile
        mine = np.unique(tile[ys - 64, xs - 64])
        assert len(mine) == 1 and mine[0] > 0 and (tile == mine[0]).sum() == len(ys)
        checked += 1
    assert checked >= 3


class TestThreshold(ModelTests):
    model_class = Threshold

    def make_payload(self) -> dict:
        return {"image": disks((2, 48, 48), [(20, 20)], 8), "axes": "cyx"}


def test_an_extra_payload_key_is_ignored_and_a_lone_fitting_axis_order_is_inferred(model):
    assert model.process({"image": np.zeros((8, 8, 8)), "axes": "cyx", "extra": 1})["labels"].shape == (8, 8)
    assert model.process({"image": np.zeros((8, 8))})["labels"].shape == (8, 8)
    with pytest.raises(ContractError, match="needs payload 'axes', one of cyx or zyx"):
        model.process({"image": np.zeros((3, 8, 8))})


def test_an_unknown_method_names_the_choices():
    with pytest.raises(ParamError, match='threshold: param \'method\' expects one of "otsu", .*"local", got "magic"'):
        Threshold().load(method="magic")


def test_contract_declares_what_the_model_takes():
    contract = Threshold.contract
    assert contract.output == "labels" and contract.tiling and contract.halo >= 20
    assert contract.inputs == ("image",) and contract.dtype == "float32"
