"""Bad input refused before any run state, in one line; guards on plans; an empty segmentation tracked."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
geff = pytest.importorskip("geff")
tifffile = pytest.importorskip("tifffile")

from stream_models import Blobs  # noqa: E402

from nahual.cli import main  # noqa: E402
from nahual.errors import ContractError  # noqa: E402
from nahual.stream import StreamOptions, make_plan, read_tracks, write_image, write_labels  # noqa: E402
from nahual.stream._payload import BlockReader, may_be_nonfinite  # noqa: E402
from nahual.stream._resume import STATE_SUFFIX  # noqa: E402

BLOBS = ("--model", "stream_models:Blobs")


def apply_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["apply", *argv, "--local", "--quiet"])
    return code, capsys.readouterr().err.strip()


def nothing_written(path) -> bool:
    """No run state beside the store and no output in it."""
    group = zarr.open_group(str(path), mode="r")
    return not os.path.exists(f"{path}{STATE_SUFFIX}") and "labels" not in group and "tables" not in group


@pytest.fixture
def image(tmp_path):
    data = np.zeros((2, 64, 64), np.float32)
    data[:, 10:20, 10:20] = 1.0
    return write_image(tmp_path / "img.zarr", data, "tyx", chunks=(1, 32, 32))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.ones((1, 16, 16), np.complex64), "is complex (complex64) but the model takes float32: the imaginary part"),
        (np.ones((1, 16, 16), bool), "is boolean but the model takes float32: a mask is not an image"),
        (np.ones((0, 16, 16), np.float32), "has a zero-size dimension (shape (0, 16, 16), axes 'tyx')"),
    ],
)
def test_pixels_the_model_cannot_take_are_refused_before_any_state(tmp_path, capsys, data, message):
    path = write_image(tmp_path / "odd.zarr", data, "tyx")
    code, err = apply_cli(capsys, path, "seg", *BLOBS)
    assert code == 1 and message in err and len(err.splitlines()) == 1, err
    assert nothing_written(path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--params", '{"threshold": NaN}'], "param 'threshold' expects float, got NaN"),
        (["--params", '{"threshold": "high"}'], "param 'threshold' expects float, got \"high\" (str)"),
        (["--params", '{"treshold": 1}'], "unknown param 'treshold' (did you mean 'threshold'?)"),
        (["--shard", "5/3"], "shard takes I/N with 0 <= I < N, got 5/3"),
        (["--channel", "3"], "the channel option is 3 but the store has no channel axis (axes 'tyx'): leave it out"),
        (["--tile", "y=8,x=8", "--halo", "30"], "halo 30 (the halo option) is larger than the tile (y=8,x=8)"),
        (["--tile", "y=8,x=64"], "halo 16 (the model's declared halo) is larger than the tile (y=8)"),
    ],
)
def test_options_and_params_that_cannot_work_are_one_line_before_any_state(image, capsys, argv, message):
    code, err = apply_cli(capsys, image, "seg", *BLOBS, *argv)
    assert code == 1 and message in err and len(err.splitlines()) == 1, err
    assert nothing_written(image)


def test_a_tile_making_over_a_million_blocks_is_refused_with_the_count(tmp_path, capsys):
    path = write_image(tmp_path / "big.zarr", np.zeros((1, 1025, 1024), np.uint8), "tyx")
    code, err = apply_cli(capsys, path, "seg", *BLOBS, "--tile", "y=1,x=1", "--halo", "0")
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "the tile option y=1,x=1 cuts the input into 1,049,600 blocks (1,025 along y x 1,024 along x)" in err
    assert "more than 1,000,000: choose a larger tile, such as the default y=1024,x=1024" in err
    assert nothing_written(path)


@pytest.mark.parametrize("value", ["0", "-5", "nan", "soon"])
def test_timeouts_that_are_not_positive_are_usage_errors(image, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["apply", image, "seg", *BLOBS, "--local", "--timeout", value])
    assert exit_info.value.code == 2
    assert f"argument --timeout: expected a positive number of seconds, got '{value}'" in capsys.readouterr().err
    assert nothing_written(image)


def test_nan_pixels_fail_their_block_by_name(tmp_path, capsys):
    data = np.zeros((2, 64, 64), np.float32)
    data[1, 40, 5] = np.inf
    data[1, 41, 5] = np.nan
    path = write_image(tmp_path / "nan.zarr", data, "tyx", chunks=(1, 32, 32))
    code, err = apply_cli(capsys, path, "seg", *BLOBS, "--tile", "y=32,x=32")  # read boxes 48 x 48 with the halo
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.endswith(
        "block 4 (t=1 y=0:32 x=0:32) failed on this process (reading the input): the image has 2 NaN or "
        "infinite pixels among the 2304 this block reads; the model takes finite numbers: "
        "replace them in the input first"
    ), err


@pytest.mark.parametrize(
    ("stored", "cast", "scanned"),
    [
        ("uint16", "float32", False),
        ("uint8", "float16", False),
        ("bool", "float16", False),
        ("int64", "float32", False),
        ("uint16", "float16", True),
        ("float32", "float32", True),
        ("float64", "float32", True),
        ("uint16", "uint16", False),
    ],
)
def test_only_pixels_that_can_be_nan_or_infinite_are_scanned(stored, cast, scanned):
    assert may_be_nonfinite(np.dtype(stored), np.dtype(cast)) is scanned


def test_integers_too_big_for_the_models_float_fail_by_name(tmp_path):
    """65535 cast to float16 is infinite: an integer image is scanned when the cast can overflow."""
    pixels = np.zeros((1, 32, 32), np.uint16)
    pixels[0, 3, 4] = 65535
    array = zarr.open_array(f"{write_image(tmp_path / 'big.zarr', pixels, 'tyx')}/0", mode="r")
    contract = dataclasses.replace(Blobs.contract, dtype="float16")
    plan = make_plan(contract, "labels", "tyx", array.shape, array.chunks, StreamOptions())
    reader = BlockReader(contract, plan, plan.blocks(), array, None, ahead=1)
    with pytest.raises(
        ContractError,
        match="1 of the 1024 image pixels this block reads are above 65504, too large for the model's float16: ",
    ):
        reader(plan.blocks()[0])
    wide = dataclasses.replace(Blobs.contract, dtype="float32")
    assert BlockReader(wide, plan, plan.blocks(), array, None, ahead=1)(plan.blocks()[0])["image"].max() == 65535


def test_an_empty_segmentation_gives_empty_tracks(tmp_path, capsys):
    path = write_image(tmp_path / "empty.zarr", np.zeros((3, 32, 40), np.uint8), "tyx")
    write_labels(path, "seg", np.zeros((3, 32, 40), np.uint32), "tyx")
    code, err = apply_cli(capsys, f"{path}/labels/seg", "lineage", "--model", "stream_models:Overlap")
    assert code == 0, err
    geff.validate_structure(f"{path}/tracks/lineage")
    nodes, edges, meta = read_tracks(path, "lineage")
    assert nodes["id"].size == 0 and edges.shape == (0, 2)
    assert meta["related_objects"][0]["path"] == "../../labels/lineage"
    masks = zarr.open_group(f"{path}/labels/lineage", mode="r")["0"]
    assert masks.shape == (3, 32, 40) and not np.asarray(masks[...]).any()
    assert main(["export", "ctc", path, str(tmp_path / "ctc")]) == 0
    assert (tmp_path / "ctc" / "res_track.txt").read_text() == ""
    assert not tifffile.imread(tmp_path / "ctc" / "mask002.tif").any()
