"""The workflow as a lab uses it: their own images in, their edits honoured (real ``snakemake --cores 2`` runs).

- a config that names only the user's images (a TIFF, converted by the
  image_ingest rule, and a plain Zarr array with its axes), merged over
  config.yaml with ``--configfile``: the demo is not made, both images are
  segmented, tracked and measured, with the same results;
- run, edit one param, run: exactly that step and what follows it is redone,
  with the new params; add an image, run: only that image runs, and its
  outputs (made afresh with the new params) equal the redone ones;
- the channel options and a model's ``channel`` param are checked against an
  image that exists when the config is read, naming the config key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")
pytest.importorskip("snakemake")

from conftest import object_f1  # noqa: E402
from test_workflow import (  # noqa: E402
    CURRENT_ENV,
    STORE,
    assert_nothing_left,
    copy_workflow,
    jobs_run,
    outputs_of,
    run_snakemake,
    stop_processes_in,
)

pytestmark = pytest.mark.slow


def demo_data(path: Path) -> Path:
    """The demo time-lapse the default config makes (seed 0, two levels), written to ``path``."""
    args = [sys.executable, "-m", "nahual", "demo-data", str(path), "--seed", "0", "--levels", "2"]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    return path


def write_config(workdir: Path, name: str, config: dict) -> str:
    (workdir / name).write_text(yaml.safe_dump(config, sort_keys=False))
    return name


def assert_equal_outputs(mine: Path, theirs: Path) -> None:
    ours, other = outputs_of(mine), outputs_of(theirs)
    assert sorted(ours) == sorted(other)
    for key in ours:
        np.testing.assert_array_equal(ours[key], other[key], err_msg=key)


def test_a_tiff_and_a_plain_array_run_alone_without_the_demo(tmp_path):
    workdir = copy_workflow(tmp_path / "wf", CURRENT_ENV)
    source = demo_data(tmp_path / "source.zarr")
    pixels = zarr.open_group(source, mode="r")["0"][...]  # t, c, y, x
    (workdir / "data").mkdir()
    tifffile.imwrite(workdir / "data" / "cells.tif", pixels)  # a plain stack: its axes must be given
    plain = zarr.open_group(workdir / "data" / "plate.zarr", mode="w")
    plain.create_array("raw", data=pixels, chunks=(1, 1, 128, 128))
    mine = write_config(
        workdir,
        "mine.yaml",
        {
            "images": {
                "cells": {"path": "data/cells.tif", "axes": "tcyx", "scale": {"y": 0.5, "x": 0.5}},
                "plate": {"path": "data/plate.zarr/raw", "axes": "tcyx"},
            }
        },
    )
    try:
        result = run_snakemake(workdir, "--cores", "2", "--configfile", mine)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        stop_processes_in(workdir)
    assert_nothing_left(workdir)
    # config.yaml names no image: once the user names theirs, the demo is neither made nor run
    assert not (workdir / STORE).exists() and not (workdir / "results" / "demo").exists()
    ingested = workdir / "resources" / "cells.zarr"
    image = zarr.open_group(ingested, mode="r")
    scale = image.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[-2:] == [0.5, 0.5]
    # the plain array's outputs go to the group that holds it
    assert_equal_outputs(ingested, workdir / "data" / "plate.zarr")
    truth = zarr.open_group(source, mode="r")["labels/ground_truth/0"][...]
    nuclei = image["labels/nuclei/0"][...]
    assert np.mean([object_f1(t, p) for t, p in zip(truth, nuclei)]) >= 0.9
    for name in ("cells", "plate"):
        for figure in ("outlines", "tracks", "summary"):
            assert (workdir / "results" / name / "report" / f"{figure}.png").stat().st_size > 10_000


def test_an_edit_redoes_exactly_what_it_changes_and_a_new_image_runs_alone(tmp_path):
    workdir = copy_workflow(tmp_path / "wf", CURRENT_ENV)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    try:
        first = run_snakemake(workdir, "--cores", "2")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

        # the tracker's params: the tracks step is started afresh, and the report drawn again; nothing else
        config["models"]["laptrack"]["params"]["max_distance"] = 10
        write_config(workdir, "config.yaml", config)
        edited = run_snakemake(workdir, "--cores", "2")
        assert edited.returncode == 0, edited.stdout[-3000:] + edited.stderr[-3000:]
        assert jobs_run(edited.stdout + edited.stderr) == {
            "output_reset image=demo, step=tracks",
            "serve_model step=tracks, image=demo, batch=0",
            "model_apply image=demo, consumer=tracks",
            "report_figures image=demo",
            "all",
        }
        tracks = zarr.open_group(workdir / STORE / "labels" / "tracks", mode="r")
        assert tracks.attrs["nahual"]["params"]["max_distance"] == 10

        # a second image (the same data): only its jobs run, the demo's are not redone
        demo_data(workdir / "resources" / "again.zarr")
        config["images"] = {"demo": STORE, "again": "resources/again.zarr"}
        write_config(workdir, "config.yaml", config)
        added = run_snakemake(workdir, "--cores", "2")
        assert added.returncode == 0, added.stdout[-3000:] + added.stderr[-3000:]
        ran = jobs_run(added.stdout + added.stderr) - {"all"}
        assert ran and all("image=again" in job for job in ran), ran
        again = run_snakemake(workdir, "--cores", "2", "-n", timeout=120)
        assert "Nothing to be done" in again.stdout + again.stderr
    finally:
        stop_processes_in(workdir)
    assert_nothing_left(workdir)
    # the redone tracks are those of a fresh run with the new params
    assert_equal_outputs(workdir / STORE, workdir / "resources" / "again.zarr")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"models": {"threshold": {"params": {"channel": 1}}}},
            "config error at models.threshold.params.channel: channel 1 of step nuclei does not exist: "
            "images.one has 1 channel (0..0)",
        ),
        (
            {"chain": [{"name": "nuclei", "model": "threshold", "params": {"channel": 2}}]},
            "config error at chain[0].params.channel: channel 2 of step nuclei does not exist",
        ),
        (
            {"images": {"one": {"path": "data/one.zarr/raw", "axes": "tcyx", "channel": 3}}},
            "config error at images.one.channel: channel 3 does not exist: images.one has 1 channel (0..0)",
        ),
        ({"streaming": {"channel": 1}}, "config error at streaming.channel: channel 1 does not exist"),
    ],
)
def test_channels_an_image_lacks_are_config_errors_naming_the_key(tmp_path, change, message):
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "data").mkdir()
    one = zarr.open_group(workdir / "data" / "one.zarr", mode="w")
    one.create_array("raw", shape=(2, 1, 64, 64), dtype="uint16", fill_value=0)  # t, c, y, x: one channel
    config = {"images": {"one": {"path": "data/one.zarr/raw", "axes": "tcyx"}}, **change}
    result = run_snakemake(workdir, "-n", "--configfile", write_config(workdir, "mine.yaml", config), timeout=120)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
