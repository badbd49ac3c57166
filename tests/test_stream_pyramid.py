"""Resolution levels: label images get the levels of their image, picked by nearest neighbour."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
ome_v05 = pytest.importorskip("ome_zarr_models.v05")
ome_v04 = pytest.importorskip("ome_zarr_models.v04")

from stream_models import Blobs  # noqa: E402
from test_stream_stitch import blobs, same_partition  # noqa: E402

from nahual.cli import main  # noqa: E402
from nahual.errors import ConfigError, ContractError  # noqa: E402
from nahual.stream import LocalModel, StreamOptions, apply, write_image, write_labels  # noqa: E402
from nahual.stream._pyramid import pick_level  # noqa: E402


def datasets(group: zarr.Group) -> list[dict]:
    attrs = dict(group.attrs)
    return attrs.get("ome", attrs)["multiscales"][0]["datasets"]


def assert_levels_picked(group: zarr.Group, count: int) -> None:
    """Levels 1.. of ``group`` take every 2nd pixel along y and x of the level before."""
    assert [d["path"] for d in datasets(group)] == [str(i) for i in range(count)]
    for level in range(1, count):
        np.testing.assert_array_equal(group[str(level)][...], group[str(level - 1)][..., ::2, ::2])


def test_write_image_levels_halve_y_and_x_and_validate(tmp_path):
    data = np.random.default_rng(0).integers(0, 1000, (2, 2, 75, 50), dtype=np.uint16)
    path = write_image(tmp_path / "img.zarr", data, "tcyx", scale=[1, 1, 0.5, 0.5], chunks=(1, 1, 16, 16), levels=3)
    group = zarr.open_group(path, mode="r")
    ome_v05.Image.from_zarr(group)
    assert [group[str(i)].shape for i in range(3)] == [(2, 2, 75, 50), (2, 2, 38, 25), (2, 2, 19, 13)]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets(group)] == [
        [1, 1, 0.5, 0.5],
        [1, 1, 1.0, 1.0],
        [1, 1, 2.0, 2.0],
    ]
    assert_levels_picked(group, 3)
    with pytest.raises(ConfigError, match="at least 1 level, got levels=0"):
        write_image(tmp_path / "none.zarr", data, "tcyx", levels=0)


def test_a_stitched_run_gets_the_levels_of_its_image(tmp_path):
    data = blobs((2, 300, 260), 128, seed=3)
    path = write_image(tmp_path / "img.zarr", data, "tyx", chunks=(1, 64, 64), levels=3)
    with LocalModel(Blobs) as model:
        summary = apply(model, path, "seg", StreamOptions(tile="y=128,x=128", halo=32), progress=False)
        apply(model, path, "whole", StreamOptions(tile="none"), progress=False)
    assert summary["final"]["levels"] == 3
    image = zarr.open_group(path, mode="r")
    labels = image["labels/seg"]
    ome_v05.ImageLabel.from_zarr(labels)
    ome_v05.Image.from_zarr(image)
    assert_levels_picked(labels, 3)
    for level in range(3):
        assert labels[str(level)].shape == image[str(level)].shape
        assert labels[str(level)].chunks == image[str(level)].chunks
        assert (
            datasets(labels)[level]["coordinateTransformations"] == datasets(image)[level]["coordinateTransformations"]
        )
    assert same_partition(labels["0"][...], image["labels/whole/0"][...])
    assert same_partition(labels["2"][...], image["labels/whole/2"][...])


def test_labels_of_a_chosen_level_get_the_coarser_ones_only(tmp_path):
    path = write_image(tmp_path / "img.zarr", blobs((1, 128, 128), 64, seed=4), "tyx", levels=3)
    assert main(["apply", path, "seg", "--local", "--model", "stream_models:Blobs", "--level", "1", "--quiet"]) == 0
    labels = zarr.open_group(f"{path}/labels/seg", mode="r")
    assert [labels[str(i)].shape for i in range(2)] == [(1, 64, 64), (1, 32, 32)]
    assert_levels_picked(labels, 2)


def test_labels_of_an_image_with_uneven_steps_keep_one_level(tmp_path):
    path = write_image(tmp_path / "img.zarr", np.zeros((40, 40), np.uint8), "yx", levels=2)
    group = zarr.open_group(path, mode="r+")
    ome = dict(group.attrs["ome"])
    ome["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"] = [1.5, 1.5]
    group.attrs["ome"] = ome
    write_labels(path, "seg", np.ones((40, 40), np.uint32), "yx")
    assert len(datasets(zarr.open_group(f"{path}/labels/seg", mode="r"))) == 1


def test_ngff_04_labels_get_04_levels(tmp_path):
    path = str(tmp_path / "v2.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=2)
    scales = [[2.0, 2.0], [4.0, 4.0]]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [
                {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": s}]}
                for i, s in enumerate(scales)
            ],
        }
    ]
    group.create_array("0", shape=(30, 21), chunks=(10, 10), dtype="uint8")
    group.create_array("1", shape=(15, 11), chunks=(10, 10), dtype="uint8")
    labels = np.arange(30 * 21, dtype=np.uint32).reshape(30, 21)
    write_labels(path, "seg", labels, "yx")
    reopened = zarr.open_group(path, mode="r")
    ome_v04.ImageLabel.from_zarr(reopened["labels/seg"])
    np.testing.assert_array_equal(reopened["labels/seg/1"][...], labels[::2, ::2])
    assert reopened["labels/seg/1"].metadata.zarr_format == 2


def test_pick_level_refuses_a_destination_of_the_wrong_shape(tmp_path):
    source = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(10, 10), chunks=(5, 5), dtype="uint8")
    dest = zarr.create_array(store=str(tmp_path / "b.zarr"), shape=(4, 5), chunks=(5, 5), dtype="uint8")
    with pytest.raises(ContractError, match=r"has shape \(5, 5\), not \(4, 5\)"):
        pick_level(source, (2, 2), dest)


def test_track_masks_get_the_levels_of_their_image(tmp_path):
    labels = np.zeros((3, 40, 40), np.uint32)
    for t in range(3):
        labels[t, 10:20, 10 + t : 20 + t] = 5 + t  # one object, a new id each frame
    path = write_image(tmp_path / "img.zarr", (labels > 0).astype(np.uint8), "tyx", levels=2)
    write_labels(path, "seg", labels, "tyx")
    assert (
        main(["apply", f"{path}/labels/seg", "lineage", "--local", "--model", "stream_models:Overlap", "--quiet"]) == 0
    )
    masks = zarr.open_group(f"{path}/labels/lineage", mode="r")
    assert_levels_picked(masks, 2)
    assert len(np.unique(masks["1"][...])) == 2  # one track, painted at both levels
