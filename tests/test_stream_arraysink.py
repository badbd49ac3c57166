"""The array output's finishing: levels picked a few chunks at a time, stored chunks passed on undecoded, NGFF 0.4."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
ome_v04 = pytest.importorskip("ome_zarr_models.v04")

from stream_models import Double  # noqa: E402

from nahual.stream import LocalModel, StreamOptions, apply, finish, write_image  # noqa: E402
from nahual.stream._arraysink import ZSTD_LEVEL, copy_chunks  # noqa: E402
from nahual.stream._integrity import compressors  # noqa: E402

#: The image side: 64 MiB of float32, in 256 tiles and chunks of 256².
SIZE = 4096
TILE = StreamOptions(tile="y=256,x=256")


def test_finishing_holds_a_few_chunks_however_large_the_levels(tmp_path):
    image = np.random.default_rng(0).random((SIZE, SIZE), dtype=np.float32)
    path = write_image(tmp_path / "img.zarr", image, "yx", chunks=(256, 256), levels=3)
    with LocalModel(Double) as model:
        apply(model, path, "twice", TILE, finalize=False, progress=False)
    tracemalloc.start()
    try:
        summary = finish(path, "twice")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Level 1 made from level 0 in memory holds at least level 1, a quarter of level 0 (16 MiB); two blocks
    # checked at once and a chunk picked from four, with their encoded bytes, are about 2.5 MiB.
    assert peak < image.nbytes / 16, f"finishing held {peak / 2**20:.1f} MiB of a {image.nbytes / 2**20:.0f} MiB level"
    assert summary["levels"] == 3
    group = zarr.open_group(path, mode="r")["predictions/twice"]
    for level in range(3):
        np.testing.assert_array_equal(group[str(level)][0], 2 * image[:: 2**level, :: 2**level])


def _array(store: object, data: np.ndarray) -> zarr.Array:
    array = zarr.create_array(
        store=store, shape=data.shape, chunks=(2, 32, 32), dtype=data.dtype, compressors=compressors(3, ZSTD_LEVEL)
    )
    array[...] = data
    return array


def test_stored_chunks_are_linked_between_folders_and_copied_between_stores(tmp_path):
    data = np.random.default_rng(1).random((2, 64, 48), dtype=np.float32)
    data[:, 32:, 32:] = 0  # a chunk of fill values, which zarr does not store
    source = _array(str(tmp_path / "source"), data)
    folder = _array(str(tmp_path / "dest"), np.zeros_like(data))
    memory = _array(zarr.storage.MemoryStore(), np.zeros_like(data))
    for dest in (folder, memory):
        copy_chunks(source, dest)
        np.testing.assert_array_equal(dest[...], data)
    stored = sorted(p.relative_to(tmp_path / "source") for p in Path(tmp_path, "source", "c").rglob("*") if p.is_file())
    assert [str(p) for p in stored] == ["c/0/0/0", "c/0/0/1", "c/0/1/0"]
    for key in stored:  # one file under two names: nothing was decoded or written
        assert os.path.samefile(tmp_path / "source" / key, tmp_path / "dest" / key)
    assert not Path(tmp_path, "dest", "c", "0", "1", "1").exists()
    assert sorted(k for k in memory.store._store_dict if k.startswith("c/")) == [str(p) for p in stored]


def test_an_ngff_04_store_gets_04_predictions_of_its_own_chunk_layout(tmp_path):
    path = str(tmp_path / "v2.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=2)
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    scale = [{"type": "scale", "scale": [1.0, 1.0]}]
    datasets = [{"path": "0", "coordinateTransformations": scale}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "name": "v2", "datasets": datasets}]
    image = np.random.default_rng(2).random((64, 48), dtype=np.float32)
    group.create_array("0", shape=image.shape, chunks=(32, 32), dtype="float32")[...] = image
    with LocalModel(Double) as model:
        apply(model, path, "twice", StreamOptions(tile="y=32,x=32"), progress=False)
    predictions = zarr.open_group(path, mode="r")["predictions/twice"]
    ome_v04.Image.from_zarr(predictions)
    np.testing.assert_array_equal(predictions["0"][0], 2 * image)
    assert Path(path, "predictions", "twice", "0", "0", "1", "1").is_file()  # NGFF 0.4's "/" chunk keys


def test_shards_that_start_at_once_share_one_intermediate_array(tmp_path):
    """Two shards that both find no intermediate array both create one: the second opens the first's."""
    from nahual.stream._arraysink import INTERMEDIATE
    from nahual.stream._jobs import make_job

    image = np.random.default_rng(1).random((128, 128), dtype=np.float32)
    path = write_image(tmp_path / "img.zarr", image, "yx", chunks=(64, 64))
    options = [StreamOptions(tile="y=64,x=64", shard=f"{i}/2") for i in range(2)]
    with LocalModel(Double) as model:
        jobs = [make_job(model, path, "twice", o, kind=None, axes=None, labels=None, info={}) for o in options]
        where = os.path.join(jobs[0].state.path, INTERMEDIATE)
        first, second = (job.sink._create(where, 1, np.dtype(np.float32)) for job in jobs)
        first[0, :2, :2] = 7.0
        assert second[0, :2, :2].tolist() == [[7.0, 7.0], [7.0, 7.0]]  # one array, not two
        assert sorted(os.listdir(jobs[0].state.path)) == sorted(["run.json", INTERMEDIATE])  # no scratch left
        for o in options:
            apply(model, path, "twice", o, progress=False)
    finish(path, "twice")
    np.testing.assert_array_equal(zarr.open_group(path, mode="r")["predictions/twice/0"][0], 2 * image)
