"""StreamOptions: one default per field, parsed alike from the CLI and from config; BlockError of a failed block."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("zarr")

from nahual.cli import build_parser
from nahual.errors import BlockError, ConfigError, ContractError, NahualError
from nahual.stream import DEFAULT_TILE, LocalModel, StreamOptions, apply, parse_shard, write_image

APPLY = ["apply", "in.zarr", "out", "--model", "m"]


def cli_options(*flags: str) -> StreamOptions:
    return StreamOptions.from_cli(build_parser().parse_args([*APPLY, *flags]))


def test_one_default_per_field_whichever_edge_builds_the_options():
    default = StreamOptions()
    assert default.tile == dict(DEFAULT_TILE) == {"y": 1024, "x": 1024}
    assert (default.halo, default.level, default.channel, default.inflight, default.retries) == (None, 0, None, 4, 0)
    assert default.shard == (0, 1) and not default.sharded
    assert cli_options() == StreamOptions.from_config({}) == default
    args = build_parser().parse_args(APPLY)
    assert all(getattr(args, f.name) is None for f in dataclasses.fields(StreamOptions))  # argparse keeps no default


def test_the_help_texts_name_the_real_defaults():
    """``nahual apply --help`` states each default; they must be StreamOptions' own."""
    parser = build_parser()
    apply_parser = parser._subparsers._group_actions[0].choices["apply"]
    helps = {a.option_strings[0]: a.help for a in apply_parser._actions if a.option_strings}
    flags = StreamOptions().to_cli()
    for flag, value in zip(flags[::2], flags[1::2]):
        assert helps[flag].endswith(f"({value})"), (flag, helps[flag])


@pytest.mark.parametrize(
    "options",
    [
        StreamOptions(),
        StreamOptions(tile={}, halo=0, level=2, channel=1, inflight=1, shard="2/3", retries=5),
        StreamOptions(tile="z=8,y=64,x=32", halo=12, shard=(0, 1)),
        StreamOptions(tile={"x": 7}, channel=0),
    ],
)
def test_cli_and_config_round_trip(options):
    assert cli_options(*options.to_cli()) == options
    config = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    assert StreamOptions.from_config(config) == options
    assert StreamOptions.from_config({**config, "shards": 4, "path": "x.zarr"}) == options  # not options: ignored


def test_config_values_take_their_config_forms():
    options = StreamOptions.from_config({"tile": {"y": 512, "x": 256}, "halo": None, "shard": [1, 4]})
    assert options.tile == {"y": 512, "x": 256} and options.halo is None and options.shard == (1, 4)
    assert options.replace(tile="none").tile == {} and options.replace(tile="none").shard == (1, 4)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tile", "y=big", "tile takes AXIS=SIZE pairs"),
        ("tile", "t=4", "tile sizes are only for z, y or x, got axis 't'"),
        ("tile", {"y": 0}, "tile size of y must be a positive integer, got 0"),
        ("tile", {"y": 5.5}, "tile size of y must be a positive integer"),
        ("tile", 512, "tile takes AXIS=SIZE pairs or a mapping"),
        ("halo", -1, "halo must be an integer >= 0"),
        ("halo", "8", "halo must be an integer >= 0"),
        ("level", -1, "level must be an integer >= 0"),
        ("channel", True, "channel must be an integer >= 0"),
        ("inflight", 0, "inflight must be an integer >= 1, got 0"),
        ("shard", "3/3", "shard takes I/N with 0 <= I < N"),
        ("shard", [1], "shard takes I/N with 0 <= I < N"),
        ("shard", (1.0, 2), "shard takes I/N with 0 <= I < N"),
        ("retries", -2, "retries must be an integer >= 0"),
    ],
)
def test_each_bad_value_is_a_config_error_naming_the_option(field, value, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        StreamOptions(**{field: value})
    with pytest.raises(ConfigError, match=f"^images.a: {message}".replace("(", r"\(")):
        StreamOptions.from_config({field: value}, where="images.a")


def test_options_are_frozen_and_parse_shard_is_public():
    with pytest.raises(dataclasses.FrozenInstanceError):
        StreamOptions().halo = 3
    assert parse_shard("1/2") == (1, 2)


@pytest.fixture
def image(tmp_path):
    data = np.zeros((2, 64, 64), np.float32)
    data[:, 5:20, 5:20] = 1.0
    return write_image(tmp_path / "img.zarr", data, "tyx", chunks=(1, 32, 32))


def test_a_failing_model_is_a_block_error_from_its_cause(image):
    with LocalModel("models_for_tests:Fail") as model, pytest.raises(BlockError) as info:
        apply(model, image, "seg", StreamOptions(tile="y=32,x=32", halo=0), kind="labels", progress=False)
    error = info.value
    assert (error.block, error.worker) == ("block 0 (t=0 y=0:32 x=0:32)", "local")
    assert str(error).startswith("block 0 (t=0 y=0:32 x=0:32) failed on local: ") and "boom" in str(error)
    assert error.__cause__ is not None and "boom" in str(error.__cause__)


def test_a_result_the_sink_refuses_is_a_block_error_from_the_contract_error(image):
    with LocalModel("stream_models:Embed") as model, pytest.raises(BlockError) as info:
        apply(model, image, "seg", StreamOptions(tile="y=32,x=32"), kind="labels", progress=False)
    error = info.value
    assert isinstance(error, NahualError) and isinstance(error.__cause__, ContractError)
    assert error.worker == "local" and "a labels model must return {'labels': array}" in str(error)
