"""Run state out of Zarr's way: beside the store, removed once the output is complete, bound to its input."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
anndata = pytest.importorskip("anndata")

from stream_models import Blobs  # noqa: E402
from test_stream_resume import labels_of  # noqa: E402
from test_stream_stitch import blobs  # noqa: E402

from nahual.cli import main  # noqa: E402
from nahual.errors import ConfigError  # noqa: E402
from nahual.stream import (  # noqa: E402
    LocalModel,
    StreamOptions,
    apply,
    finish,
    open_source,
    read_tracks,
    write_image,
    write_labels,
)
from nahual.stream._resume import RunState, state_root  # noqa: E402

TILE = StreamOptions(tile="y=64,x=64", halo=16)


@pytest.fixture
def image(tmp_path):
    return write_image(tmp_path / "img.zarr", blobs((2, 128, 128), 64, seed=3), "tyx", chunks=(1, 64, 64))


def test_zarr_lists_a_store_mid_run_and_after_without_a_warning(image):
    with LocalModel(Blobs) as model:
        apply(model, image, "seg", TILE.replace(shard="0/2"), progress=False)
        state = RunState(image, "seg")
        assert state.path == f"{image}.nahual/seg" and len(state.finished()) == 4
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            zarr.open_group(image, mode="r").tree()
            assert [p for p, _ in zarr.open_group(image, mode="r").members(max_depth=None)] == ["0"]
        apply(model, image, "seg", TILE, progress=False)
    assert not os.path.exists(f"{image}.nahual")  # the state is gone once the output is complete
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        members = sorted(p for p, _ in zarr.open_group(image, mode="r").members(max_depth=None))
    assert members == ["0", "labels", "labels/seg", "labels/seg/0"]
    provenance = zarr.open_group(f"{image}/labels/seg", mode="r").attrs["nahual"]
    assert provenance["model"] == "blobs" and provenance["run"]["final"] == {"objects": 32, "merged": 16, "levels": 1}


def test_a_complete_output_is_not_made_again_and_a_different_run_is_refused(image):
    with LocalModel(Blobs) as model:
        first = apply(model, image, "seg", TILE, progress=False)
        again = apply(model, image, "seg", TILE, progress=False)
        assert (again["processed"], again["final"]) == (0, first["final"])
        assert finish(image, "seg") == first["final"]
        with pytest.raises(
            ConfigError,
            match=rf"made by a different run \(plan differ\); run nahual reset {image} seg to make it again",
        ):
            apply(model, image, "seg", StreamOptions(tile="y=32,x=32"), progress=False)
    assert not os.path.exists(f"{image}.nahual")


def test_a_table_output_keeps_its_record_on_its_group(image):
    with LocalModel("stream_models:Embed") as model:
        first = apply(model, image, "emb", TILE, progress=False)
        assert apply(model, image, "emb", TILE, progress=False)["processed"] == 0
    assert zarr.open_group(f"{image}/tables/emb", mode="r").attrs["nahual"]["run"]["final"] == first["final"]
    assert anndata.io.read_elem(zarr.open_group(f"{image}/tables/emb", mode="r")).X.shape == (8, 2)


def test_state_left_by_an_earlier_store_is_dropped_not_resumed(tmp_path, image):
    with LocalModel(Blobs) as model:
        apply(model, image, "seg", TILE.replace(shard="0/2"), progress=False)
        new = write_image(image, blobs((2, 128, 128), 64, seed=4), "tyx", chunks=(1, 64, 64), overwrite=True)
        result = apply(model, new, "seg", TILE, progress=False)
        assert (result["processed"], result["skipped"]) == (8, 0)
        fresh = write_image(tmp_path / "fresh.zarr", blobs((2, 128, 128), 64, seed=4), "tyx", chunks=(1, 64, 64))
        apply(model, fresh, "seg", TILE, progress=False)
    assert np.array_equal(labels_of(new, "seg"), labels_of(fresh, "seg"))


def test_an_output_made_from_an_earlier_input_is_made_again(image):
    with LocalModel(Blobs) as model:
        apply(model, image, "seg", TILE, progress=False)
        write_image(image, blobs((2, 128, 128), 64, seed=9), "tyx", chunks=(1, 64, 64), overwrite=True)
        assert apply(model, image, "seg", TILE, progress=False)["processed"] == 8


def test_images_inside_a_store_keep_state_beside_the_store_root(tmp_path):
    plate = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w")
    plate.require_group("A/1")
    well = write_image(tmp_path / "plate.zarr" / "A" / "1" / "0", np.zeros((1, 8, 8), np.uint8), "tyx")
    assert state_root(well) == (str(tmp_path / "plate.zarr.nahual"), "A/1/0")
    assert RunState(well, "seg").path == str(tmp_path / "plate.zarr.nahual" / "A" / "1" / "0" / "seg")
    assert state_root(tmp_path / "plate.zarr") == (str(tmp_path / "plate.zarr.nahual"), "")


def test_a_plain_array_through_shards_stitch_tracks_and_features_with_the_cli(tmp_path, capsys):
    """As the workflow runs a plain array: outputs in its group, and stitch and later steps find them."""
    group = zarr.open_group(str(tmp_path / "grp2.zarr"), mode="w")
    group.create_array("raw", shape=(3, 128, 128), chunks=(1, 64, 64), dtype="float32")[...] = blobs(
        (3, 128, 128), 64, seed=2
    )
    raw = str(tmp_path / "grp2.zarr" / "raw")
    common = ["--local", "--quiet", "--axes", "tyx"]
    for shard in ("0/2", "1/2"):
        argv = ["apply", raw, "nuclei", *common, "--model", "stream_models:Blobs", "--tile", "y=64,x=64"]
        assert main([*argv, "--shard", shard, "--no-finish"]) == 0, capsys.readouterr().err
    assert main(["stitch", raw, "nuclei"]) == 0, capsys.readouterr().err
    nuclei = labels_of(tmp_path / "grp2.zarr", "nuclei")
    assert nuclei.shape == (3, 128, 128) and nuclei.max() > 10
    tracks = ["apply", f"{raw}/labels/nuclei", "tracks", *common, "--model", "stream_models:Overlap"]
    assert main(tracks) == 0, capsys.readouterr().err
    features = ["apply", raw, "features", *common, "--model", "stream_models:Measure", "--labels", "nuclei"]
    assert main(features) == 0, capsys.readouterr().err
    nodes, _, _ = read_tracks(tmp_path / "grp2.zarr", "tracks")
    table = anndata.io.read_elem(zarr.open_group(str(tmp_path / "grp2.zarr" / "tables" / "features"), mode="r"))
    assert nodes["id"].size == table.n_obs == sum(len(np.unique(f[f > 0])) for f in nuclei)
    assert main(["stitch", str(tmp_path / "grp2.zarr"), "nuclei"]) == 0  # the group names the same output
    assert not os.path.exists(tmp_path / "grp2.zarr.nahual")


def test_a_label_image_takes_its_images_axes(tmp_path):
    data = np.zeros((1, 2, 16, 16), np.uint8)
    path = write_image(tmp_path / "img.zarr", data, "tcyx")
    write_labels(path, "seg", np.zeros((1, 16, 16), np.uint32), "tyx")
    assert open_source(f"{path}/labels/seg", axes="tcyx").axes == "tyx"
    with pytest.raises(ConfigError, match="disagrees with the axes 'tyx'"):
        open_source(f"{path}/labels/seg", axes="zyx")
