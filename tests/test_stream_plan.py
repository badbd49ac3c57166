"""Block planning: cores tile the image exactly once, halos are clipped, blocks own whole chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("zarr")

from nahual import Contract
from nahual.errors import ConfigError, ContractError
from nahual.stream import DEFAULT_TILE, StreamOptions, make_plan, parse_shard, parse_tile
from nahual.stream._plan import choose_model_axes

SEG_2D = Contract(axes=("yx",), output="labels", halo=8)


@settings(max_examples=60, deadline=None)
@given(
    t=st.integers(1, 3),
    y=st.integers(1, 70),
    x=st.integers(1, 70),
    tile_y=st.integers(1, 40),
    tile_x=st.integers(1, 40),
    halo=st.integers(0, 12),
    chunk_y=st.integers(1, 30),
    chunk_x=st.integers(1, 30),
)
def test_cores_partition_the_image_and_blocks_own_whole_chunks(t, y, x, tile_y, tile_x, halo, chunk_y, chunk_x):
    options = StreamOptions(tile={"y": tile_y, "x": tile_x}, halo=min(halo, tile_y, tile_x))  # larger: refused
    plan = make_plan(SEG_2D, "labels", "tyx", (t, y, x), (1, chunk_y, chunk_x), options)
    cover = np.zeros((t, y, x), np.int32)
    chunks = plan.out_chunks
    owner: dict[tuple[int, ...], int] = {}
    for block in plan.blocks():
        core = tuple(slice(s, e) for s, e in zip(block.start, block.stop))
        cover[core] += 1
        for axis, (s, e, rs, re, n) in enumerate(
            zip(block.start, block.stop, block.read_start, block.read_stop, plan.shape)
        ):
            tiled = plan.axes[axis] in plan.tile
            assert rs == (max(0, s - plan.halo) if tiled else s)
            assert re == (min(n, e + plan.halo) if tiled else e)
        ranges = [range(s // c, math.ceil(e / c)) for s, e, c in zip(block.start, block.stop, chunks)]
        for index in np.ndindex(*[len(r) for r in ranges]):
            chunk = tuple(r[i] for r, i in zip(ranges, index))
            assert owner.setdefault(chunk, block.index) == block.index, f"chunk {chunk} written by two blocks"
            lo = [c * k for c, k in zip(chunks, chunk)]
            hi = [min(n, c * (k + 1)) for c, k, n in zip(chunks, chunk, plan.shape)]
            assert all(s <= a and b <= e for s, e, a, b in zip(block.start, block.stop, lo, hi)), "chunk not whole"
    assert (cover == 1).all()
    assert plan.out_voxels(plan.blocks()[0]) == math.prod(
        e - s for s, e in zip(plan.blocks()[0].start, plan.blocks()[0].stop)
    )


def test_iterated_axes_and_channel_choice():
    contract = Contract(axes=("yx",), output="labels")
    with pytest.raises(
        ConfigError, match=r"choose one with the channel option \(--channel N, or images\.NAME\.channel"
    ):
        make_plan(contract, "labels", "tcyx", (2, 3, 10, 10), (1, 1, 10, 10))
    plan = make_plan(contract, "labels", "tcyx", (2, 3, 10, 10), (1, 1, 10, 10), StreamOptions(channel=2))
    assert plan.iterated == "tc" and len(plan.blocks()) == 2
    assert all(b.start[1] == 2 and b.stop[1] == 3 for b in plan.blocks())
    assert plan.describe(plan.blocks()[1]) == "block 1 (t=1 c=2)"
    with pytest.raises(ConfigError, match=r"^channel 5 does not exist: the store has 3 channels \(0\.\.2\)"):
        make_plan(contract, "labels", "tcyx", (2, 3, 10, 10), (1, 1, 10, 10), StreamOptions(channel=5))
    features = make_plan(Contract(axes=("yx",), output="features"), "features", "tcyx", (2, 3, 10, 10), (1, 1, 10, 10))
    assert len(features.blocks()) == 6  # features may iterate channels


def test_model_axes_choice():
    two_or_three_d = Contract(axes=("cyx", "czyx"), output="labels", channels=2)
    assert choose_model_axes(two_or_three_d, "czyx", (2, 5, 10, 10)) == "czyx"
    assert choose_model_axes(two_or_three_d, "cyx", (2, 10, 10)) == "cyx"
    with pytest.raises(ContractError, match="at least 2 channels; the store has 1"):
        choose_model_axes(two_or_three_d, "tyx", (3, 10, 10))
    with pytest.raises(ContractError, match="model expects axes zyx; the store has axes 'tyx'"):
        choose_model_axes(Contract(axes=("zyx",)), "tyx", (3, 10, 10))
    series_or_frame = Contract(axes=("cyx", "tcyx"), output="features")
    assert choose_model_axes(series_or_frame, "tcyx", (4, 1, 10, 10), kind="features") == "cyx"
    tracker = Contract(axes=("tyx",), inputs=("labels",), output="tracks", tiling=False)
    plan = make_plan(tracker, "tracks", "tyx", (5, 30, 30), (1, 10, 10), StreamOptions(tile={"y": 10}))
    assert plan.tile == {} and len(plan.blocks()) == 1  # trackers get the whole series


def test_tiles_larger_than_the_image_and_default_halo():
    plan = make_plan(SEG_2D, "labels", "yx", (50, 60), (50, 60), StreamOptions(tile={"y": 100, "x": 30}))
    assert plan.tile == {"x": 30} and plan.halo == 8
    assert plan.out_chunks == (50, 30)  # a tile that is not a chunk multiple becomes the chunk
    whole = make_plan(SEG_2D, "labels", "yx", (50, 60), (50, 60), StreamOptions(tile={}))
    assert whole.halo == 0 and len(whole.blocks()) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("y=1024,x=512", {"y": 1024, "x": 512}), ("none", {}), ("", {}), (None, {}), (" Z=4 ", {"z": 4})],
)
def test_parse_tile(text, expected):
    assert parse_tile(text) == expected


@pytest.mark.parametrize("text", ["y1024", "y=0", "t=5", "y=a", "yx=4"])
def test_parse_tile_rejects(text):
    with pytest.raises(ConfigError, match="tile"):
        parse_tile(text)


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4)
    assert parse_shard(None) == (0, 1)
    for bad in ("4/4", "1", "a/b", "-1/3"):
        with pytest.raises(ConfigError, match="I/N"):
            parse_shard(bad)


def test_tile_axis_the_model_does_not_take_is_refused():
    with pytest.raises(ConfigError, match="^the tile option names axis 'z', which the model does not take"):
        make_plan(SEG_2D, "labels", "zyx", (4, 30, 30), (1, 30, 30), StreamOptions(tile={"z": 2}))


def test_default_options_tile_at_the_one_default_tile():
    plan = make_plan(SEG_2D, "labels", "tyx", (2, 3000, 2500), (1, 512, 512))
    assert plan.tile == dict(DEFAULT_TILE) == {"y": 1024, "x": 1024} and plan.halo == SEG_2D.halo
    assert len(plan.blocks()) == 2 * 3 * 3


@pytest.mark.parametrize(("kind", "tiled"), [("labels", True), ("embeddings", True), ("features", False)])
def test_the_tile_option_reaches_every_tiling_kind(kind, tiled):
    """An embeddings step tiles at the tile it is given; per-object features always get whole frames."""
    contract = Contract(axes=("yx",), output=kind, halo=4)
    plan = make_plan(contract, kind, "tyx", (2, 64, 64), (1, 32, 32), StreamOptions(tile="y=16,x=32", halo=2))
    if tiled:
        assert plan.tile == {"y": 16, "x": 32} and plan.halo == 2 and len(plan.blocks()) == 2 * 4 * 2
    else:
        assert plan.tile == {} and plan.halo == 0 and len(plan.blocks()) == 2
