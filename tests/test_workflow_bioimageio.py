"""The workflow's ``array`` steps: a bioimage.io package's probability map as ``IMAGE/predictions/NAME``.

- the schema's chain kinds are the output kinds a model may declare;
- a dry run plans an array step as a labels step is planned: one consumer per
  shard, then a stitch (any model will do for the plan);
- for real (slow, in ``envs/bioimageio-onnx``; skipped, saying so, where it is
  not prepared): a chain of one step with ``model: bioimageio`` and
  ``params: {source: ...}`` on the demo data, in two shards. Its output is a
  valid OME-Zarr image with the demo's levels, equal within the package's
  tolerance to bioimageio.core's own prediction of whole frames, and ``nahual
  verify`` passes on the store (and reports a damaged predictions chunk).

A step that names an array step as its input is a config error:
tests/test_workflow.py (test_bad_config_fails_with_a_message_naming_the_key).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

zarr = pytest.importorskip("zarr")
pytest.importorskip("snakemake")

import test_models_bioimageio as bioimageio_tests  # noqa: E402
from bioimageio_env import MEAN, STD  # noqa: E402
from conftest import ROOT  # noqa: E402
from test_stream_integrity import flip_byte  # noqa: E402
from test_workflow import STORE, assert_nothing_left, copy_workflow, run_snakemake  # noqa: E402
from workflow_runs import finished_run  # noqa: E402

from nahual.model import OUTPUT_KINDS  # noqa: E402

pytestmark = pytest.mark.slow

#: The ONNX packages, built in the prepared environment (the test skips, saying so, without it), and the
#: empty bioimageio cache they must leave empty.
caches, packages = bioimageio_tests.caches, bioimageio_tests.packages

#: Two shards of 128² tiles, the model's own halo, the demo's nuclei channel.
STREAMING = {"tile": {"y": 128, "x": 128}, "halo": None, "shards": 2, "inflight": 2, "channel": 0}
#: The fixed normalisation of the package, set for the demo's intensities (background ~320, nuclei ~1020).
DEMO_NORMALISATION = "mean: 530.0, std: 177.0"


def test_the_schema_s_chain_kinds_are_the_output_kinds_of_models():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    kind = schema["properties"]["chain"]["items"]["properties"]["kind"]
    assert tuple(kind["enum"]) == OUTPUT_KINDS


def test_dry_run_plans_an_array_step_s_shards_and_their_stitch(tmp_path):
    chain = [{"name": "probs", "model": "threshold", "kind": "array"}]
    workdir = copy_workflow(tmp_path / "wf", {"chain": chain, "streaming": STREAMING})
    result = run_snakemake(workdir, "-n", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    applies = [line for line in result.stdout.splitlines() if line.startswith("Shell command: nahual apply ")]
    assert len(applies) == 2 and all(" probs " in line and "--kind array" in line for line in applies), applies
    for index in range(2):
        mine = [line for line in applies if f"--shard {index}/2 " in line]
        assert len(mine) == 1 and f"--done results/demo/probs/shard{index}-of-2.done " in mine[0], applies
    assert "nahual stitch resources/demo.zarr probs > logs/segment_stitch/demo/probs.log" in result.stdout
    assert "rule report_figures" not in result.stdout  # nothing to draw: no labels, no tracks


def demo_package(built: Path, dest: Path) -> Path:
    """The two-channel convolution package with its normalisation set for the demo, so that its map is no step."""
    shutil.copytree(built / "conv-onnx", dest)
    rdf = (dest / "rdf.yaml").read_text()
    assert f"mean: {MEAN}, std: {STD}" in rdf
    (dest / "rdf.yaml").write_text(rdf.replace(f"mean: {MEAN}, std: {STD}", DEMO_NORMALISATION))
    return dest


def nahual_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nahual", *args], capture_output=True, text=True, timeout=300)


def test_an_array_step_writes_the_package_s_predictions_and_verify_passes(packages, tmp_path):
    from ome_zarr_models.v05 import Image

    package = demo_package(packages, tmp_path / "demo-conv")
    workdir = copy_workflow(
        tmp_path / "wf",
        {
            "models": {"bioimageio": {"params": {"device": "cpu"}}},
            "chain": [{"name": "probs", "model": "bioimageio", "kind": "array", "params": {"source": str(package)}}],
            "streaming": STREAMING,
        },
    )
    with finished_run(workdir, "--cores", "2"):
        pass
    assert_nothing_left(workdir)
    store = workdir / STORE
    group = zarr.open_group(store, mode="r")
    Image.from_zarr(group["predictions/probs"])  # valid OME-Zarr 0.5
    meta = group["predictions/probs"].attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in meta["axes"]] == list("tcyx") and len(meta["datasets"]) == 2
    probs, image = group["predictions/probs/0"][...], group["0"]
    assert probs.dtype == np.float32 and probs.shape == (image.shape[0], 2, *image.shape[-2:])
    np.testing.assert_array_equal(group["predictions/probs/1"][...], probs[..., ::2, ::2])  # the demo's level 1
    about = group["predictions/probs"].attrs["nahual"]["about"]
    assert about["source"] == str(package / "rdf.yaml")
    tolerance = about["tolerance"]
    for t in (0, image.shape[0] - 1):
        whole = bioimageio_tests.reference("onnx", package, image[t, 0], tmp_path)
        np.testing.assert_allclose(probs[t], whole, rtol=tolerance["relative"], atol=tolerance["absolute"])
        assert np.abs(probs[t] - whole).max() < 1e-5  # the halo makes tiles see what whole frames see
        assert np.mean((whole > 0.1) & (whole < 0.9)) > 0.05, "the map is no step: the comparison means something"
    checked = nahual_cli("verify", str(store))
    assert checked.returncode == 0 and checked.stderr.strip().endswith(" 0 damaged"), checked.stderr
    chunk = next(p for p in (store / "predictions" / "probs" / "0" / "c").rglob("*") if p.is_file())
    flip_byte(chunk)
    damaged = nahual_cli("verify", str(store))
    assert damaged.returncode == 1 and f"damaged: {store}/predictions/probs/0 chunk c/" in damaged.stderr
