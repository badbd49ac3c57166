"""``nahual ingest``: TIFFs the tests write themselves become OME-Zarr images that ``nahual apply`` reads."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")
ome_v05 = pytest.importorskip("ome_zarr_models.v05")

from nahual.cli import main  # noqa: E402
from nahual.errors import ConfigError  # noqa: E402
from nahual.stream import _ingest as ingest_module  # noqa: E402
from nahual.stream import open_source  # noqa: E402
from nahual.stream._ingest import ingest, parse_pairs  # noqa: E402


def _pixels(shape: tuple[int, ...], dtype=np.uint16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)


def _halved_mean(plane: np.ndarray) -> np.ndarray:
    """Reference 2 x 2 mean, pixel by pixel (a last odd row or column averages what it has)."""
    h, w = plane.shape
    out = np.empty(((h + 1) // 2, (w + 1) // 2))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = plane[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].astype(np.float64).mean()
    return out


def _axes_meta(path) -> list[dict]:
    return zarr.open_group(str(path), mode="r").attrs["ome"]["multiscales"][0]["axes"]


def _siblings(tmp_path) -> list[str]:
    return sorted(os.listdir(tmp_path))


def test_plain_2d_tiff_with_mean_levels_chunks_and_valid_metadata(tmp_path):
    data = _pixels((65, 81))
    tifffile.imwrite(tmp_path / "plain.tif", data)
    result = ingest(tmp_path / "plain.tif", tmp_path / "plain.zarr", chunks="y=16,x=32", levels=3)
    assert (result.axes, result.shape, result.levels) == ("yx", (65, 81), 3)
    source = open_source(result.path)
    assert (source.axes, source.shape, source.scale) == ("yx", (65, 81), (1.0, 1.0))
    np.testing.assert_array_equal(source.array[...], data)
    assert source.array.chunks == (16, 32) and source.array.dtype == np.uint16
    assert source.array.compressors[0].checksum  # zstd with its checksum, as every array nahual writes
    group = zarr.open_group(result.path, mode="r")
    ome_v05.Image.from_zarr(group)
    assert [group[str(k)].shape for k in range(3)] == [(65, 81), (33, 41), (17, 21)]
    np.testing.assert_array_equal(group["1"][...], np.rint(_halved_mean(data)).astype(np.uint16))
    np.testing.assert_array_equal(group["2"][...], np.rint(_halved_mean(group["1"][...])).astype(np.uint16))
    assert open_source(result.path, level=2).scale == (4.0, 4.0)
    assert _axes_meta(result.path) == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]


def test_tiles_and_strips_that_do_not_line_up_with_the_chunks(tmp_path):
    data = _pixels((2, 100, 130))
    tifffile.imwrite(tmp_path / "tiled.tif", data, tile=(32, 32), metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "strips.tif", data, rowsperstrip=7, metadata={"axes": "TYX"})
    for name in ("tiled", "strips"):
        result = ingest(tmp_path / f"{name}.tif", tmp_path / f"{name}.zarr", chunks="y=48,x=40")
        array = open_source(result.path).array
        assert (result.axes, array.chunks) == ("tyx", (1, 48, 40))
        np.testing.assert_array_equal(array[...], data)


def test_imagej_hyperstack_gives_axes_spacing_and_frame_interval(tmp_path):
    data = _pixels((3, 4, 2, 40, 50))  # t, z, c, y, x: ImageJ's order
    tifffile.imwrite(
        tmp_path / "hyper.tif",
        data,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "TZCYX", "spacing": 2.5, "unit": "um", "finterval": 3.0},
    )
    result = ingest(tmp_path / "hyper.tif", tmp_path / "hyper.zarr")
    source = open_source(result.path)
    assert (source.axes, source.shape) == ("tczyx", (3, 2, 4, 40, 50))
    assert source.scale == (3.0, 1.0, 2.5, 0.5, 0.5)
    np.testing.assert_array_equal(source.array[...], data.transpose(0, 2, 1, 3, 4))
    assert source.array.chunks == (1, 1, 1, 40, 50)
    assert [a.get("unit") for a in _axes_meta(result.path)] == [
        "second",
        None,
        "micrometer",
        "micrometer",
        "micrometer",
    ]
    group = zarr.open_group(result.path, mode="r")
    ome_v05.Image.from_zarr(group)
    assert group["1"].shape == (3, 2, 4, 20, 25)
    assert open_source(result.path, level=1).scale == (3.0, 1.0, 2.5, 1.0, 1.0)


def test_ome_tiff_physical_sizes_and_units(tmp_path):
    data = _pixels((5, 2, 30, 20))
    tifffile.imwrite(
        tmp_path / "cells.ome.tif",
        data,
        ome=True,
        metadata={
            "axes": "ZCYX",
            "PhysicalSizeX": 250.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 250.0,
            "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 1.5,
        },
    )
    result = ingest(tmp_path / "cells.ome.tif", tmp_path / "cells.zarr")
    source = open_source(result.path)
    assert (source.axes, source.shape, source.scale) == ("czyx", (2, 5, 30, 20), (1.0, 1.5, 250.0, 250.0))
    np.testing.assert_array_equal(source.array[...], data.transpose(1, 0, 2, 3))
    assert [a.get("unit") for a in _axes_meta(result.path)] == [None, "micrometer", "nanometer", "nanometer"]
    ome_v05.Image.from_zarr(zarr.open_group(result.path, mode="r"))


def test_rgb_samples_become_channels(tmp_path):
    data = _pixels((24, 32, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    source = open_source(ingest(tmp_path / "rgb.tif", tmp_path / "rgb.zarr").path)
    assert (source.axes, source.shape) == ("cyx", (3, 24, 32))
    np.testing.assert_array_equal(source.array[...], data.transpose(2, 0, 1))


def test_scale_and_axes_flags_override_the_metadata(tmp_path):
    tifffile.imwrite(
        tmp_path / "z.tif",
        _pixels((4, 16, 16)),
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZYX", "spacing": 3.0, "unit": "um"},
    )
    result = ingest(tmp_path / "z.tif", tmp_path / "a.zarr", scale="z=5")
    assert result.scale == (5.0, 0.5, 0.5) and result.units == ("micrometer",) * 3
    relabelled = ingest(tmp_path / "z.tif", tmp_path / "b.zarr", axes="tyx")
    assert (relabelled.axes, relabelled.scale, relabelled.units) == (
        "tyx",
        (1.0, 0.5, 0.5),
        (None,) + ("micrometer",) * 2,
    )


def test_stack_without_axes_is_refused_and_named_with_the_flag(tmp_path):
    data = _pixels((6, 16, 24))
    tifffile.imwrite(tmp_path / "stack.tif", data)
    with pytest.raises(ConfigError, match=r"does not name.*'QYX'.*--axes"):
        ingest(tmp_path / "stack.tif", tmp_path / "stack.zarr")
    assert _siblings(tmp_path) == ["stack.tif"]
    result = ingest(tmp_path / "stack.tif", tmp_path / "stack.zarr", axes="zyx", scale="z=2,y=0.5,x=0.5")
    source = open_source(result.path)
    assert (source.axes, source.scale) == ("zyx", (2.0, 0.5, 0.5))
    np.testing.assert_array_equal(source.array[...], data)
    with pytest.raises(ConfigError, match="--axes needs 3 distinct letters"):
        ingest(tmp_path / "stack.tif", tmp_path / "other.zarr", axes="qyx")


def test_folder_of_frames_sorts_naturally(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = [_pixels((20, 30), seed=i) for i in range(11)]
    for i in (10, 2, 0, 1, 9, 3, 4, 5, 6, 7, 8):  # written out of order; frame10 sorts last, not after frame1
        tifffile.imwrite(folder / f"frame{i}.tif", frames[i])
    (folder / "notes.txt").write_text("not a frame")
    with pytest.raises(ConfigError, match="--axes"):
        ingest(folder, tmp_path / "frames.zarr")
    result = ingest(folder, tmp_path / "frames.zarr", axes="tyx", scale="t=60")
    source = open_source(result.path)
    assert (source.axes, source.shape, source.scale) == ("tyx", (11, 20, 30), (60.0, 1.0, 1.0))
    np.testing.assert_array_equal(source.array[...], np.stack(frames))
    ome_v05.Image.from_zarr(zarr.open_group(result.path, mode="r"))


def test_mismatched_folder_names_the_first_frame_that_differs(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(1, 6):
        shape, dtype = ((20, 31) if i == 3 else (20, 30)), (np.uint8 if i >= 4 else np.uint16)
        tifffile.imwrite(folder / f"f{i}.tif", np.zeros(shape, dtype))
    with pytest.raises(ConfigError, match=r"frame f3.tif has shape \(20, 31\).*f1.tif has shape \(20, 30\)"):
        ingest(folder, tmp_path / "out.zarr", axes="tyx")
    assert _siblings(tmp_path) == ["frames"]


def test_existing_output_needs_overwrite_and_must_be_zarr(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _pixels((8, 8)))
    tifffile.imwrite(tmp_path / "b.tif", _pixels((8, 8), seed=1))
    out = tmp_path / "img.zarr"
    ingest(tmp_path / "a.tif", out)
    with pytest.raises(ConfigError, match="exists already; pass --overwrite"):
        ingest(tmp_path / "b.tif", out)
    ingest(tmp_path / "b.tif", out, overwrite=True)
    np.testing.assert_array_equal(open_source(out).array[...], _pixels((8, 8), seed=1))
    (tmp_path / "precious").mkdir()
    with pytest.raises(ConfigError, match="not a Zarr store"):
        ingest(tmp_path / "a.tif", tmp_path / "precious", overwrite=True)
    assert _siblings(tmp_path) == ["a.tif", "b.tif", "img.zarr", "precious"]


def test_a_failure_leaves_neither_output_nor_partial(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "a.tif", _pixels((32, 32)))

    def broken(*args, **kwargs):
        assert any(".partial-" in name for name in os.listdir(tmp_path))  # level 0 is being written beside OUT
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest_module, "_mean_halves", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest(tmp_path / "a.tif", tmp_path / "a.zarr")
    assert _siblings(tmp_path) == ["a.tif"]


def test_a_multi_page_stack_is_streamed_not_loaded(tmp_path):
    """Python-side allocations (numpy, zarr, tifffile buffers, all traced by tracemalloc) peak at a few planes.

    The stack is 32 MiB; loading it whole would show a peak above that. What this
    does not see is memory that C libraries allocate without telling tracemalloc.
    """
    planes, side = 64, 512
    with tifffile.TiffWriter(tmp_path / "long.tif") as writer:
        for t in range(planes):
            writer.write(np.full((side, side), t, np.uint16), contiguous=True)
    stack_bytes = planes * side * side * 2
    tracemalloc.start()
    try:
        result = ingest(tmp_path / "long.tif", tmp_path / "long.zarr", axes="tyx")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < stack_bytes / 4, f"peak {peak / 2**20:.1f} MiB for a {stack_bytes / 2**20:.0f} MiB stack"
    array = open_source(result.path).array
    assert array.shape == (planes, side, side)
    assert [int(array[t, 0, 0]) for t in (0, 31, 63)] == [0, 31, 63]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--levels", "0"], "--levels must be a positive integer"),
        (["--chunks", "y=0"], "--chunks values must be positive integers"),
        (["--chunks", "z=4"], "--chunks takes AXIS=VALUE pairs for axes of 'yx'"),
        (["--scale", "y=big"], "--scale values must be positive numbers"),
        (["--scale", "z=2"], "--scale names axis 'z' but plain.tif has axes 'yx'"),
        (["--axes", "tyx"], "--axes needs 2 distinct letters"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    tifffile.imwrite(tmp_path / "plain.tif", _pixels((8, 8)))
    code = main(["ingest", str(tmp_path / "plain.tif"), str(tmp_path / "out.zarr"), *flags])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("nahual ingest: error: ") and err.count("\n") == 1, err
    assert message in err
    assert _siblings(tmp_path) == ["plain.tif"]


def test_not_a_tiff_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "fake.tif").write_bytes(b"not a tiff at all")
    assert main(["ingest", str(tmp_path / "fake.tif"), str(tmp_path / "out.zarr")]) == 1
    assert "fake.tif is not a TIFF file" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "missing.tif"), str(tmp_path / "out.zarr")]) == 1
    assert "no TIFF file or folder at" in capsys.readouterr().err


def test_parse_pairs_takes_mappings_too():
    assert parse_pairs({"Y": 256, "x": "128"}, "--chunks", "yx", int) == {"y": 256, "x": 128}
    assert parse_pairs(" ", "--scale", "tzyx", float) == {}


def test_ingest_then_apply_threshold_end_to_end(tmp_path, capsys):
    movie = np.full((3, 64, 64), 100, np.uint16)
    movie[:, 8:24, 8:24] = 1000
    movie[1:, 40:56, 30:50] = 1000
    tifffile.imwrite(tmp_path / "movie.tif", movie, imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "movie.zarr"
    assert main(["ingest", str(tmp_path / "movie.tif"), str(out)]) == 0
    assert f"{out}: tyx (3, 64, 64) uint16, 2 levels" in capsys.readouterr().err
    params = '{"threshold": 500, "sigma": 0}'
    code = main(["apply", str(out), "nuclei", "--model", "threshold", "--local", "--quiet", "--params", params])
    assert code == 0, capsys.readouterr().err
    labels = zarr.open_group(str(out), mode="r")["labels/nuclei/0"][...]
    assert [len(np.unique(frame)) - 1 for frame in labels] == [1, 2, 2]
    assert (labels[:, 8:24, 8:24] > 0).all() and (labels[0, 40:56, 30:50] == 0).all()
