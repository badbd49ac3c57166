"""Integrity: checksummed chunks, damaged blocks redone on resume, damaged inputs named, ``nahual verify``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
anndata = pytest.importorskip("anndata")

from stream_models import Blobs  # noqa: E402
from test_stream_resume import labels_of  # noqa: E402
from test_stream_stitch import blobs  # noqa: E402

from nahual.cli import main  # noqa: E402
from nahual.errors import BlockError, ContractError  # noqa: E402
from nahual.stream import LocalModel, StreamOptions, apply, finish, verify, write_image, write_labels  # noqa: E402
from nahual.stream._chunkfiles import read_chunks, write_chunks  # noqa: E402
from nahual.stream._integrity import compressors, read  # noqa: E402
from nahual.stream._resume import RunState  # noqa: E402

TILE = StreamOptions(tile="y=64,x=64", halo=16)


def flip_byte(path: str | Path, at: int | None = None) -> None:
    """Flip the bits of one byte (at ``at``, by default in the middle of the file), as a bad disk or a stray
    write would."""
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def codecs_of(array_folder: str | Path) -> list[dict]:
    meta = json.loads((Path(array_folder) / "zarr.json").read_text())
    return [c for c in meta["codecs"] if c["name"] == "zstd"]


@pytest.fixture
def image(tmp_path):
    return write_image(tmp_path / "img.zarr", blobs((2, 192, 192), 64, seed=5), "tyx", chunks=(1, 64, 64))


@pytest.fixture
def reference(image):
    with LocalModel(Blobs) as model:
        apply(model, image, "reference", TILE, progress=False)
    return labels_of(image, "reference")


def half_run(image: str) -> RunState:
    """Blocks 0, 2, 4... of ``seg`` done, not stitched."""
    with LocalModel(Blobs) as model:
        apply(model, image, "seg", TILE.replace(shard="0/2"), progress=False)
    return RunState(image, "seg")


def test_every_array_nahual_writes_has_zstd_checksums(image, tmp_path):
    half_run(image)
    with LocalModel(Blobs) as model:
        apply(model, image, "seg", TILE, progress=False)
    labels = np.zeros((2, 192, 192), np.uint32)
    labels[:, 10:20, 10:20] = 1
    pyramid = write_image(tmp_path / "levels.zarr", labels.astype(np.uint8), "tyx", levels=2)
    write_labels(pyramid, "seg", labels, "tyx")
    assert main(["apply", pyramid, "feat", "--local", "--model", "stream_models:Measure", "--labels", "seg"]) == 0
    folders = [f"{image}/0", f"{image}/labels/seg/0", f"{pyramid}/1", f"{pyramid}/labels/seg/1"]
    folders += [str(p.parent) for p in Path(pyramid, "tables", "feat").rglob("zarr.json")]
    metas = {f: json.loads(Path(f, "zarr.json").read_text()) for f in folders}
    # AnnData's empty ``raw`` is a 0-d placeholder written without data
    arrays = [
        f for f, m in metas.items() if m["node_type"] == "array" and m["attributes"].get("encoding-type") != "null"
    ]
    assert len(arrays) > 5
    for folder in arrays:
        assert [c["configuration"]["checksum"] for c in codecs_of(folder)] == [True], folder


def test_ngff_04_outputs_have_zstd_checksums_too(tmp_path):
    path = str(tmp_path / "v2.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=2)
    axes = [{"name": a, "type": "space"} for a in "yx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    group.create_array("0", shape=(64, 64), chunks=(32, 32), dtype="float32")[...] = 1.0
    with LocalModel(Blobs) as model:
        apply(model, path, "seg", StreamOptions(tile="y=32,x=32", halo=8), progress=False)
    meta = json.loads(Path(path, "labels", "seg", "0", ".zarray").read_text())
    assert meta["compressor"] == {"id": "zstd", "level": 0, "checksum": True}


def flip_recorded(state: RunState, index: int) -> None:
    """Flip a byte in the middle of what block ``index`` recorded (its ids and its halo view) in the journal."""
    journal, start, stop = state.side_data(index)
    flip_byte(journal, (start + stop) // 2)


def test_a_flipped_byte_in_a_finished_block_is_found_and_the_block_redone(image, reference):
    state = half_run(image)
    flip_recorded(state, 0)
    with LocalModel(Blobs) as model:
        result = apply(model, image, "seg", TILE, progress=False)
    assert (result["processed"], result["skipped"], result["redone"]) == (10, 8, 1)
    assert np.array_equal(labels_of(image, "seg"), reference)


def test_damage_at_either_end_of_a_record_is_redone_too(image, reference):
    state = half_run(image)
    journal, start, stop = state.side_data(2)
    flip_byte(journal, start)  # the first byte of block 2's ids
    journal, start, stop = state.side_data(4)
    flip_byte(journal, stop - 1)  # the last byte of block 4's view of its halo
    with LocalModel(Blobs) as model:
        result = apply(model, image, "seg", TILE, progress=False)
    assert result["redone"] == 2
    assert np.array_equal(labels_of(image, "seg"), reference)


def test_stitching_refuses_damaged_blocks_and_the_same_apply_repairs_them(image, reference):
    with LocalModel(Blobs) as model:
        for shard in ("0/2", "1/2"):
            apply(model, image, "seg", TILE.replace(shard=shard), progress=False)
    state = RunState(image, "seg")
    flip_recorded(state, 13)
    with pytest.raises(BlockError, match=r"block 13 \(t=1 y=64:128 x=64:128\) failed on this process \(finishing"):
        finish(image, "seg")
    flip_recorded(state, 4)
    with pytest.raises(BlockError, match=r"block 4 \(t=0 y=64:128 x=64:128\) .*crc32:.*run the same apply again"):
        finish(image, "seg")
    with LocalModel(Blobs) as model:
        assert apply(model, image, "seg", TILE, progress=False)["redone"] == 2
    assert np.array_equal(labels_of(image, "seg"), reference)


def test_a_damaged_input_chunk_is_an_error_naming_array_chunk_and_block(image, capsys):
    flip_byte(Path(image, "0", "c", "1", "1", "2"))  # first read by block 10, through its halo
    argv = ["apply", image, "seg", "--local", "--model", "stream_models:Blobs", "--quiet", "--tile", "y=64,x=64"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("nahual apply: error: block 10 (t=1 y=0:64 x=64:128) failed on this process (reading")
    assert f"chunk c/1/1/2 of the input {image}/0 cannot be decoded (RuntimeError: Zstd" in err, err
    assert "seg" not in zarr.open_group(image, mode="r").get("labels", {})


def test_verify_finds_a_flipped_byte_in_an_output_chunk(image, capsys):
    with LocalModel(Blobs) as model:
        apply(model, image, "seg", TILE, progress=False)
    assert main(["verify", image]) == 0
    assert capsys.readouterr().err.strip().endswith(" 0 damaged")
    chunk = Path(image, "labels", "seg", "0", "c", "1", "0", "2")
    assert chunk.is_file()
    flip_byte(chunk)
    assert main(["verify", image]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"damaged: {image}/labels/seg/0 chunk c/1/0/2: RuntimeError: "), lines
    assert len(lines) == 2 and lines[1].endswith(" 1 damaged"), lines
    assert main(["verify", f"{image}-missing"]) == 1
    assert capsys.readouterr().err == f"nahual verify: error: no Zarr group at {image}-missing\n"


def test_verify_checks_the_recorded_blocks_of_unfinished_runs_and_with_all_the_inputs(image):
    state = half_run(image)
    found = verify(image)
    assert (found.blocks, found.damage) == (9, ())
    flip_recorded(state, 10)
    flip_byte(Path(image, "0", "c", "0", "0", "0"))
    found = verify(image)
    assert [(d.where, d.part) for d in found.damage] == [(state.path, "block 10 (t=1 y=0:64 x=64:128)")]
    assert "its side data in " in found.damage[0].reason and "crc32:" in found.damage[0].reason
    everything = verify(image, everything=True)
    assert [d.part for d in everything.damage] == ["chunk c/0/0/0", "block 10 (t=1 y=0:64 x=64:128)"]
    assert everything.damage[0].where == f"{image}/0"


def test_verify_reads_the_predictions_an_array_model_wrote(image, capsys):
    from stream_models import Double

    with LocalModel(Double) as model:
        apply(model, image, "twice", TILE, progress=False)
    written = zarr.open_group(image, mode="r")["predictions/twice/0"]
    assert np.array_equal(written[:, 0], 2 * zarr.open_group(image, mode="r")["0"][...])
    assert main(["verify", image]) == 0
    assert capsys.readouterr().err.strip().endswith(" 0 damaged")
    chunk = next(p for p in Path(image, "predictions", "twice", "0", "c").rglob("*") if p.is_file())
    flip_byte(chunk)
    assert main(["verify", image]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"damaged: {image}/predictions/twice/0 chunk c/"), lines
    assert len(lines) == 2 and lines[1].endswith(" 1 damaged"), lines


def test_verify_checks_the_recorded_blocks_of_an_unfinished_array_run(image):
    from stream_models import Double

    with LocalModel(Double) as model:
        apply(model, image, "twice", TILE.replace(shard="0/2"), progress=False)
    state = RunState(image, "twice")
    found = verify(image)
    assert (found.blocks, found.damage) == (9, ())
    os.unlink(Path(state.path, "array", "c", "1", "0", "0", "1"))  # block 10 (t, c, y, x)
    found = verify(image)
    assert [(d.where, d.part) for d in found.damage] == [(state.path, "block 10 (t=1 y=0:64 x=64:128)")]
    assert "its intermediate array has crc32:" in found.damage[0].reason


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_chunks_written_past_zarr_read_back_through_zarr_edges_included_and_fail_when_damaged(tmp_path, zarr_format):
    def create(name: str) -> zarr.Array:
        return zarr.create_array(
            store=str(tmp_path / name), shape=(2, 70, 90), chunks=(1, 32, 32), dtype=np.uint32, fill_value=0,
            zarr_format=zarr_format, compressors=compressors(zarr_format),
        )  # fmt: skip

    folder, array, whole = str(tmp_path / "raw"), create("raw"), create("whole")
    values = np.random.default_rng(zarr_format).integers(0, 2**32, array.shape, dtype=np.uint32)
    for t in range(2):
        for y in range(0, 70, 32):
            for x in range(0, 90, 32):
                box = (slice(t, t + 1), slice(y, min(y + 32, 70)), slice(x, min(x + 32, 90)))
                assert write_chunks(array, box, values[box])
    assert np.array_equal(zarr.open_array(folder, mode="r")[...], values)
    assert write_chunks(whole, (slice(0, 2), slice(0, 70), slice(0, 90)), values)  # 18 chunks in one call
    assert write_chunks(whole, (slice(1, 2), slice(0, 64), slice(32, 90)), values[1:, :64, 32:] + 1)  # four of them
    expected = values.copy()
    expected[1:, :64, 32:] += 1
    assert np.array_equal(zarr.open_array(str(tmp_path / "whole"), mode="r")[...], expected)
    assert not write_chunks(array, (slice(0, 1), slice(1, 33), slice(0, 32)), values[:1, 1:33, :32])  # cuts chunks
    assert not write_chunks(array, (slice(0, 1), slice(0, 40), slice(0, 32)), values[:1, :40, :32])  # ends inside one
    key = array.metadata.encode_chunk_key((1, 2, 2))
    flip_byte(os.path.join(folder, key))
    with pytest.raises(ContractError, match=f"chunk {key} of the intermediate labels"):
        read(zarr.open_array(folder, mode="r"), (slice(1, 2), slice(64, 70), slice(64, 90)), "the intermediate labels")


@pytest.mark.parametrize(
    ("zarr_format", "dtype", "fill"), [(2, ">u2", 0), (2, "<f4", 1.5), (3, "uint16", 7), (3, "int32", 0)]
)
def test_chunks_read_past_zarr_equal_zarrs_own_reads_missing_and_edge_chunks_included(
    tmp_path, zarr_format, dtype, fill
):
    folder = str(tmp_path / "a")
    array = zarr.create_array(
        store=folder, shape=(3, 50, 70), chunks=(2, 16, 32), dtype=dtype, fill_value=fill,
        zarr_format=zarr_format, compressors=compressors(zarr_format),
    )  # fmt: skip
    rng = np.random.default_rng(zarr_format)
    array[...] = rng.integers(0, 1000, array.shape).astype(dtype)
    os.unlink(os.path.join(folder, array.metadata.encode_chunk_key((1, 3, 2))))  # reads as the fill value
    array = zarr.open_array(folder, mode="r")
    selections = [(slice(None),), (1, slice(10, 49), slice(30, 70)), (slice(2, 3), 49, slice(0, 70)), (0, 5, 69)]
    for _ in range(20):
        start = [int(rng.integers(0, n)) for n in array.shape]
        selections.append(tuple(slice(s, int(rng.integers(s + 1, n + 1))) for s, n in zip(start, array.shape)))
    for selection in selections:
        direct, through_zarr = read_chunks(array, selection), np.asarray(array[selection])
        assert direct.dtype == through_zarr.dtype and np.array_equal(direct, through_zarr), selection


def test_chunks_that_zarr_must_decode_are_left_to_zarr(tmp_path):
    from zarr.codecs import BloscCodec

    blosc = zarr.create_array(store=str(tmp_path / "b"), shape=(8,), chunks=(4,), dtype="u1", compressors=BloscCodec())
    sharded = zarr.create_array(
        store=str(tmp_path / "s"), shape=(8,), chunks=(2,), shards=(4,), dtype="u1", compressors=compressors(3)
    )
    bare = zarr.create_array(store=str(tmp_path / "n"), shape=(8,), chunks=(4,), dtype="u1", compressors=None)
    memory = zarr.create_array(store={}, shape=(8,), chunks=(4,), dtype="u1", compressors=compressors(3))
    for array in (blosc, sharded, bare, memory):
        array[...] = np.arange(8)
        assert read_chunks(array, (slice(0, 8),)) is None
        assert np.array_equal(read(array, (slice(2, 7),)), np.arange(2, 7))
