"""OME-Zarr reading and writing: metadata validated with ome-zarr-models, GEFF with geff."""

from __future__ import annotations

import json

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
geff = pytest.importorskip("geff")
ome_v05 = pytest.importorskip("ome_zarr_models.v05")
ome_v04 = pytest.importorskip("ome_zarr_models.v04")

from nahual.errors import ConfigError, ContractError  # noqa: E402
from nahual.stream import open_source, read_tracks, write_image, write_labels, write_tracks  # noqa: E402


def _image(tmp_path, shape=(2, 3, 40, 50), axes="tcyx"):
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    return write_image(tmp_path / "img.zarr", data, axes, scale=[1.0, 1.0, 0.5, 0.25]), data


def test_image_and_labels_validate_as_ngff_05(tmp_path):
    path, data = _image(tmp_path)
    labels = np.zeros((2, 40, 50), np.uint32)
    labels[:, 5:9, 5:9] = 7
    write_labels(path, "cells", labels, "tyx", attrs={"model": "test"})
    group = zarr.open_group(path, mode="r")
    image = ome_v05.Image.from_zarr(group)
    assert image.labels is not None
    ome_v05.ImageLabel.from_zarr(group["labels/cells"])
    assert group["labels"].attrs["ome"]["labels"] == ["cells"]
    assert group["labels"].attrs["ome"]["version"] == "0.5"
    np.testing.assert_array_equal(group["labels/cells/0"][...], labels)
    assert group["labels/cells"].attrs["nahual"] == {"model": "test"}
    source = open_source(path)
    assert (source.axes, source.shape, source.scale) == ("tcyx", data.shape, (1.0, 1.0, 0.5, 0.25))
    np.testing.assert_array_equal(source.array[...], data)


def test_label_image_input_points_back_to_its_image(tmp_path):
    path, _ = _image(tmp_path)
    write_labels(path, "cells", np.zeros((2, 40, 50), np.uint8), "tyx")
    source = open_source(f"{path}/labels/cells")
    assert (source.axes, source.label_name, source.image_path) == ("tyx", "cells", str(path))
    assert source.array.dtype == np.uint32


@pytest.mark.parametrize(
    ("data", "axes", "message"),
    [
        (np.zeros((2, 40, 50), np.uint32), "yxt", "need axes 'tyx'"),
        (np.zeros((2, 40, 51), np.uint32), "tyx", r"need shape \(2, 40, 50\)"),
        (np.full((2, 40, 50), -1, np.int32), "tyx", "non-negative integers"),
        (np.zeros((2, 40, 50), np.float32), "tyx", "non-negative integers"),
    ],
)
def test_write_labels_refuses_what_does_not_fit_the_image(tmp_path, data, axes, message):
    path, _ = _image(tmp_path)
    with pytest.raises(ContractError, match=message):
        write_labels(path, "bad", data, axes)


def test_ngff_04_store_reads_and_gets_04_labels(tmp_path):
    path = str(tmp_path / "v2.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=2)
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "name": "v2",
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 2.0]}]}],
        }
    ]
    group.create_array("0", shape=(30, 20), chunks=(10, 10), dtype="uint8")[...] = 1
    source = open_source(path)
    assert (source.axes, source.scale, source.zarr_format) == ("yx", (2.0, 2.0), 2)
    write_labels(path, "seg", np.ones((30, 20), np.uint32), "yx")
    reopened = zarr.open_group(path, mode="r")
    ome_v04.Image.from_zarr(reopened)
    ome_v04.ImageLabel.from_zarr(reopened["labels/seg"])
    assert reopened["labels"].attrs["labels"] == ["seg"]


def test_plain_array_needs_axes(tmp_path):
    root = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    root.create_array("raw", shape=(4, 8, 8), chunks=(1, 8, 8), dtype="uint8")
    with pytest.raises(ConfigError, match="--axes"):
        open_source(tmp_path / "plain.zarr" / "raw")
    source = open_source(tmp_path / "plain.zarr" / "raw", axes="tyx")
    assert (source.axes, source.image_path) == ("tyx", str(tmp_path / "plain.zarr"))
    with pytest.raises(ConfigError, match="name 2 dimensions"):
        open_source(tmp_path / "plain.zarr" / "raw", axes="yx")
    with pytest.raises(ConfigError, match="without OME-Zarr multiscales"):
        open_source(tmp_path / "plain.zarr")


def test_plain_array_uses_its_dimension_names(tmp_path):
    root = zarr.open_group(str(tmp_path / "named.zarr"), mode="w")
    root.create_array("raw", shape=(4, 8, 8), chunks=(1, 8, 8), dtype="uint8", dimension_names=["t", "y", "x"])
    assert open_source(tmp_path / "named.zarr" / "raw").axes == "tyx"


def test_missing_level_and_conflicting_axes_are_refused(tmp_path):
    path, _ = _image(tmp_path)
    with pytest.raises(ConfigError, match="levels 0..0"):
        open_source(path, level=1)
    with pytest.raises(ConfigError, match="disagrees"):
        open_source(path, axes="tzyx")
    with pytest.raises(ConfigError, match="no Zarr"):
        open_source(tmp_path / "missing.zarr")


def test_tracks_are_valid_geff_linked_to_labels(tmp_path):
    path, _ = _image(tmp_path)
    write_labels(path, "cells", np.zeros((2, 40, 50), np.uint32), "tyx")
    nodes = {
        "id": np.array([10, 11, 20, 21, 22]),
        "t": np.array([0, 0, 1, 1, 1]),
        "y": np.arange(5.0),
        "x": np.arange(5.0),
        "seg_id": np.array([1, 2, 1, 2, 3]),
    }
    edges = {"source": np.array([10, 10, 11]), "target": np.array([20, 22, 21])}
    out = write_tracks(path, "lineage", nodes, edges, labels_name="cells", attrs={"model": "t"})
    geff.validate_structure(out)
    read_nodes, read_edges, meta = read_tracks(path, "lineage")
    np.testing.assert_array_equal(read_nodes["id"], nodes["id"])
    np.testing.assert_array_equal(read_nodes["seg_id"], nodes["seg_id"])
    assert sorted(map(tuple, read_edges.tolist())) == [(10, 20), (10, 22), (11, 21)]
    assert meta["related_objects"][0]["path"] == "../../labels/cells"
    assert meta["extra"]["nahual"] == {"model": "t"}
    ome_v05.Image.from_zarr(zarr.open_group(path, mode="r"))  # the tracks group does not upset the image
    with pytest.raises(ContractError, match="not among the nodes"):
        write_tracks(path, "bad", nodes, {"source": np.array([10]), "target": np.array([99])})


def test_write_image_refuses_to_overwrite_and_bad_axes(tmp_path):
    path, data = _image(tmp_path)
    with pytest.raises(ConfigError, match="exists"):
        write_image(path, data, "tcyx")
    with pytest.raises(ConfigError, match="t, c, z, y, x order"):
        write_image(tmp_path / "b.zarr", data, "ctyx")
    json.dumps(dict(zarr.open_group(path).attrs))  # attributes are plain JSON
