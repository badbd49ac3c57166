"""The embeddings output through the streaming path: what an embeddings model returns, as an AnnData table.

Fake models (``stream_models.ObjectEmbed``, ``TileEmbed``, ``Embed``) stand in
for DINO: per-object vectors with labels, boxes, names, patch tokens and
``uns``; per-cell vectors of tiles; one bare vector per tile.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
anndata = pytest.importorskip("anndata")
pd = pytest.importorskip("pandas")

from conftest import subprocess_env  # noqa: E402
from test_stream_resume import kill_when  # noqa: E402

from nahual import Client, Timeout  # noqa: E402
from nahual.errors import BlockError, ContractError  # noqa: E402
from nahual.stream import LocalModel, StreamOptions, apply, write_image, write_labels  # noqa: E402
from nahual.stream._resume import RunState  # noqa: E402

OBJECTS = "stream_models:ObjectEmbed"
WHOLE = StreamOptions(tile="none")
#: Objects per frame of the ``image`` fixture: frame 2 has none.
BOXES = {0: {1: (10, 10, 20, 20), 2: (40, 30, 50, 45)}, 1: {1: (12, 8, 22, 18), 2: (40, 30, 50, 45), 3: (0, 50, 6, 64)}}


def segmented(path, frames: int, boxes: dict[int, dict[int, tuple[int, int, int, int]]]) -> str:
    """A 2-channel tcyx image (channel 0: 10 x label inside objects, plus a ramp; channel 1: 5) and labels ``seg``."""
    labels = np.zeros((frames, 64, 64), np.uint32)
    for t, objects in boxes.items():
        for value, (y0, x0, y1, x1) in objects.items():
            labels[t, y0:y1, x0:x1] = value
    image = np.zeros((frames, 2, 64, 64), np.float32)
    image[:, 0] = labels * 10.0 + np.arange(64, dtype=np.float32)[None, None, :] / 64
    image[:, 1] = 5.0
    written = write_image(path, image, "tcyx", chunks=(1, 1, 32, 32))
    write_labels(written, "seg", labels, "tyx")
    return written


@pytest.fixture
def image(tmp_path):
    return segmented(tmp_path / "img.zarr", 3, BOXES)


def embed(image, name: str, model: str = OBJECTS, params=None, options=WHOLE, **kwargs):
    """Run ``model`` on ``image`` into ``tables/NAME`` in this process; returns the table read back."""
    with LocalModel(model, params) as handle:
        apply(handle, image, name, options, progress=False, **kwargs)
    return anndata.read_zarr(f"{image}/tables/{name}")


def test_object_vectors_with_labels_boxes_names_tokens_and_model_uns(image):
    table = embed(image, "emb", params={"patch_grid": True}, labels="seg")
    assert table.obs["t"].tolist() == [0, 0, 1, 1, 1] and table.obs["label"].tolist() == [1, 2, 1, 2, 3]
    assert table.obs["label"].dtype == np.int64 and table.obs["row"].tolist() == [0, 1, 0, 1, 2]
    boxes = [BOXES[t][label] for t, label in zip(table.obs["t"], table.obs["label"])]
    bbox = table.obs[["bbox_y_min", "bbox_x_min", "bbox_y_max", "bbox_x_max"]].to_numpy()
    np.testing.assert_array_equal(bbox, boxes)
    assert list(table.var_names) == ["c0_mean", "c1_mean", "area"] and table.X.dtype == np.float32
    areas = [(y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in boxes]
    np.testing.assert_allclose(table.X[:, 1:], np.column_stack([np.full(5, 5.0), areas]))
    np.testing.assert_allclose(table.X[:, 0], table.obs["label"] * 10 + [(x0 + x1 - 1) / 128 for _, x0, _, x1 in boxes])
    assert table.obsm["patch_tokens"].shape == (5, 2, 2, 3) and table.obsm["patch_tokens"].dtype == np.float32
    np.testing.assert_array_equal(table.obsm["patch_tokens"][:, 1, 0], table.X)
    assert table.uns["embedding"]["model"] == "object-embed" and table.uns["embedding"]["weights"] == "none"
    assert table.uns["nahual"]["model"] == OBJECTS and table.uns["nahual"]["params"] == {"patch_grid": True}
    assert table.uns["nahual"]["server"]["nahual"] == table.uns["nahual"]["nahual_version"]
    assert isinstance(table.obs["region"].dtype, pd.CategoricalDtype)
    assert table.obs["region"].tolist() == ["labels/seg"] * 5
    attrs = table.uns["spatialdata_attrs"]
    assert attrs == {"region": "labels/seg", "region_key": "region", "instance_key": "label"}


def test_a_label_image_input_links_the_table_to_it(image):
    with LocalModel(OBJECTS) as handle:
        apply(handle, f"{image}/labels/seg", "emb", WHOLE, progress=False)
    table = anndata.read_zarr(f"{image}/tables/emb")
    assert table.obs["label"].tolist() == [1, 2, 1, 2, 3] and table.obs["region"].tolist() == ["labels/seg"] * 5
    assert table.uns["spatialdata_attrs"]["region"] == "labels/seg"


def test_joins_the_regionprops_table_on_t_and_label(image):
    features = embed(image, "shape", "regionprops", {"shape": False, "intensity": False}, labels="seg")
    vectors = embed(image, "emb", labels="seg")
    profile, props = (table.to_df().join(table.obs) for table in (vectors, features))
    joined = profile.merge(props, on=["t", "label"], suffixes=("", "_props"), validate="one_to_one")
    assert len(joined) == len(profile) == len(props) == 5
    np.testing.assert_array_equal(joined["area"], joined["area_props"])
    for edge in ("bbox_y_min", "bbox_x_min", "bbox_y_max", "bbox_x_max"):
        np.testing.assert_array_equal(joined[edge], joined[f"{edge}_props"])


def test_tiles_boxes_are_image_coordinates_and_not_labels_linked(image):
    options = StreamOptions(tile="y=32,x=32", halo=8)
    table = embed(image, "tiles", "stream_models:TileEmbed", {"grid": 16}, options)
    data = zarr.open_group(image, mode="r")["0"][...]
    assert set(table.obs["y0"]) == {0, 32} and set(table.obs["x0"]) == {0, 32}
    assert table.obs["bbox_y_min"].min() == 0 and table.obs["bbox_y_max"].max() == 64
    assert sorted(set(table.obs["bbox_y_min"])) == [0, 16, 24, 32, 40, 56]  # halo: the tile at 32 reads from 24
    for (t, y0, x0, y1, x1), vector in zip(
        table.obs[["t", "bbox_y_min", "bbox_x_min", "bbox_y_max", "bbox_x_max"]].to_numpy(), table.X
    ):
        np.testing.assert_allclose(vector, data[t, :, y0:y1, x0:x1].mean(axis=(1, 2)), rtol=1e-6)
    assert list(table.var_names) == ["c0_mean", "c1_mean"] and "embedding" not in table.uns
    assert "region" not in table.obs and "spatialdata_attrs" not in table.uns
    with LocalModel("stream_models:TileEmbed") as handle:  # a label image read, but its rows are no objects
        apply(handle, f"{image}/labels/seg", "tiles2", options, progress=False)
    assert "spatialdata_attrs" not in anndata.read_zarr(f"{image}/tables/tiles2").uns


def test_a_bare_embedding_gets_index_names_and_no_uns(image):
    table = embed(image, "bare", "stream_models:Embed", options=StreamOptions(tile="y=32,x=32"), kind="embeddings")
    assert table.X.shape == (24, 2) and list(table.var_names) == ["0", "1"]
    assert set(table.uns) == {"nahual"} and not table.obsm
    assert sorted(table.obs.columns) == ["block", "c", "row", "t", "x0", "y0"]


def test_frames_without_objects_give_no_rows_and_need_not_say_the_width(image):
    table = embed(image, "emb", params={"width_when_empty": False}, labels="seg")
    assert table.shape == (5, 3) and 2 not in set(table.obs["t"])
    assert list(table.var_names) == ["c0_mean", "c1_mean", "area"]


@pytest.mark.parametrize(("width_when_empty", "shape"), [(True, (0, 3)), (False, (0, 0))])
def test_a_table_without_rows_keeps_the_width_when_known(tmp_path, width_when_empty, shape):
    empty = segmented(tmp_path / "empty.zarr", 2, {})
    table = embed(empty, "emb", params={"width_when_empty": width_when_empty}, labels="seg")
    assert table.shape == shape and table.X.dtype == np.float32
    assert list(table.var_names) == (["c0_mean", "c1_mean", "area"] if width_when_empty else [])
    assert table.obs["label"].dtype == np.int64 and table.uns["spatialdata_attrs"]["region"] == "labels/seg"


@pytest.mark.parametrize(
    ("misbehave", "message"),
    [
        ("obs-2d", "obs column 'label' must be 1-d of length 2, got shape (2, 1)"),
        ("obs-complex", "obs column 'score' must hold real numbers or strings, got dtype complex128"),
        ("label-float", "obs column 'label' must hold integers (label ids), got dtype float64"),
        ("obs-clash", "obs columns ['row'] are written by nahual"),
        ("bbox-axis", "obs column 'bbox_z_min' is along axis 'z'; the input has axes 'tcyx'"),
        ("columns-short", "embedding columns must be 3 distinct strings, one per column; got 2 names"),
        ("patches-rows", "patches must be (n, ...) numbers with n = 2, one per embedding row; got shape (3, 2)"),
        ("uns-array", "embeddings uns must be a JSON-able dict: Object of type ndarray is not JSON serializable"),
    ],
)
def test_a_result_breaking_the_contract_fails_its_block_in_one_line(image, misbehave, message):
    with pytest.raises(BlockError) as info:
        embed(image, "emb", params={"misbehave": misbehave}, labels="seg")
    assert isinstance(info.value.__cause__, ContractError) and "\n" not in str(info.value)
    assert str(info.value).startswith("block 0 (t=0) failed on local: ") and message in str(info.value)


@pytest.mark.parametrize(
    ("misbehave", "message"),
    [
        ("width-by-frame", "embedding widths differ: block 0 (t=0) has d=5, block 1 (t=1) has d=6"),
        ("uns-by-frame", "embedding uns differ between block 0 (t=0) and block 1 (t=1)"),
    ],
)
def test_blocks_that_disagree_are_refused_when_the_table_is_made(image, misbehave, message):
    with pytest.raises(ContractError, match=message.replace("(", r"\(").replace(")", r"\)")):
        embed(image, "emb", params={"misbehave": misbehave}, labels="seg")
    assert "emb" not in zarr.open_group(image, mode="r").get("tables", {})


def same_table(a, b) -> None:
    """Two embeddings tables hold the same rows, vectors, names, tokens and model ``uns``."""
    pd.testing.assert_frame_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.X, b.X)
    assert list(a.var_names) == list(b.var_names) and a.uns["embedding"] == b.uns["embedding"]
    np.testing.assert_array_equal(a.obsm["patch_tokens"], b.obsm["patch_tokens"])


def test_a_served_model_writes_what_a_local_one_does(serve, image):
    reference = embed(image, "local", params={"patch_grid": True}, labels="seg")
    served = serve()
    with Client(served.address, timeout=Timeout(connect=5.0, request=10.0, startup=30.0)) as client:
        apply(client.load(OBJECTS, patch_grid=True), image, "served", WHOLE, labels="seg", progress=False)
    same_table(anndata.read_zarr(f"{image}/tables/served"), reference)


def test_killed_midway_and_resumed_gives_the_same_table(tmp_path):
    boxes = {t: {1 + t % 3: (4 * t, 2, 4 * t + 5, 9), 7: (40, 40, 50, 50 + t)} for t in range(8)}
    image = segmented(tmp_path / "img.zarr", 8, boxes)
    params = {"patch_grid": True, "delay_s": 0.25}
    reference = embed(image, "reference", params={"patch_grid": True}, labels="seg")
    done = tmp_path / "done.json"
    command = [sys.executable, "-m", "nahual", "apply", str(image), "emb", "--local", "--model", OBJECTS]
    command += ["--params", json.dumps(params), "--labels", "seg", "--inflight", "1", "--quiet", "--done", str(done)]
    state = RunState(str(image), "emb")
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert kill_when(process, lambda: len(state.finished()) >= 3), "the run finished before it could be killed"
    assert not done.exists()
    resumed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(done.read_text())
    assert summary["skipped"] >= 3 and summary["processed"] + summary["skipped"] == 8
    same_table(anndata.read_zarr(f"{image}/tables/emb"), reference)
