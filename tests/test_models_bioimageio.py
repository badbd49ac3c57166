"""The bioimageio adapter, for real: servers in ``envs/bioimageio-onnx`` and ``envs/bioimageio-torch``.

Skipped, with the reason, where those environments are not prepared
(``.ci/install`` prepares them). The packages are made by
``tests/bioimageio_env.py`` in the environments' own Python: a convolution
stack whose receptive field is exactly its declared halo, as ONNX and as
TorchScript, the same network with a binarizing post-processing (instances),
with per-sample statistics, and one with weights no environment runs.
Nothing is downloaded: the servers run with ``BIOIMAGEIO_CACHE_PATH`` an
empty folder, which must stay empty, and a weights cache of the test's own.
The reference of every comparison is bioimageio.core's own ``predict`` of the
whole image, run in the same environment.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from bioimageio_env import HALO, MEAN, STD, blobs
from conftest import ROOT, TESTS

import nahual
from nahual.errors import ConfigError, ParamError, RemoteError

#: True when this file runs inside a bioimageio environment (the contract tests), False in the orchestrator.
IN_ENV = importlib.util.find_spec("bioimageio") is not None
SPECS = {
    "onnx": f"uv:{ROOT / 'envs' / 'bioimageio-onnx'}",
    "torch": f"uv:{ROOT / 'envs' / 'bioimageio-torch'}?torch=cpu",
}
HELPER = TESTS / "bioimageio_env.py"
TIMEOUT = nahual.Timeout(connect=10.0, request=300.0, startup=180.0)
#: The test image: two frames whose size the packages take whole (16 + 8n along y and x).
SHAPE = (2, 256, 248)
#: Tiles that are no multiple of the chunks (64) and leave smaller tiles at the far borders.
TILE = "y=96,x=96"


def _env_python(kind: str) -> Path:
    """The prepared environment's interpreter; skips the test when it is not prepared."""
    from nahual.launcher import parse_env_spec

    backend = parse_env_spec(SPECS[kind])
    if not backend.is_synced():
        pytest.skip(
            f"the {kind} bioimageio environment is not prepared: run .ci/install (nahual env-prepare '{SPECS[kind]}')"
        )
    return Path(backend.python()[0])


def _run(python: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(python), *args], capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """An empty bioimageio cache and a nahual weights cache, set for the module (and its servers)."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("bioimageio-cache", "weights")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIOIMAGEIO_CACHE_PATH", str(folders["bioimageio-cache"]))
        patch.setenv("NAHUAL_WEIGHTS", str(folders["weights"]))
        yield folders
    assert not any(folders["bioimageio-cache"].iterdir()), "something was downloaded"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, caches: dict[str, Path]) -> Path:
    """The ONNX packages (and the TorchScript one where its environment is prepared)."""
    out = tmp_path_factory.mktemp("packages")
    _run(_env_python("onnx"), str(HELPER), "onnx", str(out))
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The test image as a two-level OME-Zarr store (chunks of 64), and its pixels."""
    pytest.importorskip("zarr")
    from nahual.stream import write_image

    pixels = np.stack([blobs(SHAPE[1:], 60, seed) for seed in range(SHAPE[0])])
    path = write_image(tmp_path_factory.mktemp("image") / "img.zarr", pixels, "tyx", chunks=(1, 64, 64), levels=2)
    return Path(path), pixels


def reference(kind: str, package: Path, frame: np.ndarray, tmp_path: Path, block: int | None = None) -> np.ndarray:
    """bioimageio.core's own prediction of one whole frame (first output, batch dropped)."""
    np.save(tmp_path / "frame.npy", frame)
    args = ["--block", str(block)] if block else []
    _run(
        _env_python(kind),
        str(HELPER),
        "predict",
        str(package),
        str(tmp_path / "frame.npy"),
        str(tmp_path / "out.npy"),
        *args,
    )
    return np.load(tmp_path / "out.npy")


@pytest.fixture(scope="module")
def onnx_server(packages: Path) -> Iterator[nahual.ServerProcess]:
    with nahual.launch(SPECS["onnx"], timeout=TIMEOUT) as served:
        yield served


def _apply(handle: Any, path: Path, name: str, **options: Any) -> dict[str, Any]:
    from nahual.stream import StreamOptions, apply

    return apply(handle, path, name, StreamOptions(**options), progress=False)


@pytest.mark.parametrize("kind", ["onnx", "torch"])
def test_tiled_apply_equals_bioimageio_core_on_the_whole_image(kind, packages, image, tmp_path):
    """Every block is padded by the package's halo and cropped back: tiles then see what the whole image sees."""
    zarr = pytest.importorskip("zarr")
    from ome_zarr_models.v05 import Image

    path, pixels = image
    package = packages / "conv-onnx"
    model = "bioimageio"
    if kind == "torch":
        _run(_env_python("torch"), str(HELPER), "torchscript", str(packages))
        package, model = packages / "conv-torchscript", "bioimageio-torch"
    with nahual.launch(SPECS[kind], timeout=TIMEOUT) as served, served.client() as client:
        handle = client.load(model, source=str(package), device="cpu", threads=1)
        assert handle.contract.halo == HALO and handle.contract.output == "array" and handle.contract.tiling
        result = _apply(handle, path, f"prob-{kind}", tile=TILE)
    assert result["blocks"] == 2 * 3 * 3 and result["final"] == {"channels": 2, "dtype": "float32", "levels": 2}
    group = zarr.open_group(path / "predictions" / f"prob-{kind}", mode="r")
    Image.from_zarr(group)  # valid OME-Zarr 0.5
    assert [a["name"] for a in group.attrs["ome"]["multiscales"][0]["axes"]] == list("tcyx")
    tiled = group["0"][...]
    tolerance = handle.contract.about["tolerance"]
    for t in range(SHAPE[0]):
        whole = reference(kind, package, pixels[t], tmp_path)
        np.testing.assert_allclose(tiled[t], whole, rtol=tolerance["relative"], atol=tolerance["absolute"])
        assert np.abs(tiled[t] - whole).max() < 1e-5
    np.testing.assert_array_equal(group["1"][...], tiled[:, :, ::2, ::2])  # the image's second level, picked
    about = group.attrs["nahual"]["about"]
    assert about["name"] == package.name and about["weights_format"] == ("onnx" if kind == "onnx" else "torchscript")


def test_without_the_halo_tiles_differ_along_their_borders(onnx_server, packages, image, tmp_path):
    """The same run with halo 0 is wrong within the receptive field of each inner tile border, and only there."""
    zarr = pytest.importorskip("zarr")
    path, pixels = image
    with onnx_server.client() as client:
        handle = client.load("bioimageio", source=str(packages / "conv-onnx"))
        _apply(handle, path, "no-halo", tile=TILE, halo=0)
    tiled = zarr.open_group(path / "predictions" / "no-halo", mode="r")["0"][0]
    error = np.abs(tiled - reference("onnx", packages / "conv-onnx", pixels[0], tmp_path)).max(axis=0)
    near = np.zeros(error.shape, bool)
    for border in (96, 192):
        near[border - HALO : border + HALO] = near[:, border - HALO : border + HALO] = True
    assert error[near].max() > 1e-2 and error[~near].max() < 1e-5


def test_an_array_output_is_made_by_shards_resumes_and_finishes_once(onnx_server, packages, image):
    """Two shards, a block lost and redone, then finishing twice: the same image as one plain run."""
    zarr = pytest.importorskip("zarr")
    from nahual.stream import finish
    from nahual.stream._resume import RunState

    path, _ = image
    with onnx_server.client() as client:
        handle = client.load("bioimageio", source=str(packages / "conv-onnx"))
        plain = _apply(handle, path, "plain", tile=TILE)["final"]
        first = _apply(handle, path, "sharded", tile=TILE, shard="0/2")
        RunState(str(path), "sharded").forget(0)  # as if killed before block 0 was recorded
        again = _apply(handle, path, "sharded", tile=TILE, shard="0/2")
        second = _apply(handle, path, "sharded", tile=TILE, shard="1/2")
    assert first["final"] is None and (again["processed"], again["skipped"]) == (1, 8) and second["final"] is None
    assert finish(path, "sharded") == finish(path, "sharded") == plain
    group = zarr.open_group(path / "predictions", mode="r")
    np.testing.assert_array_equal(group["sharded/0"][...], group["plain/0"][...])


def test_an_instance_package_gives_labels_that_are_the_whole_mask_s_objects(onnx_server, packages, image, tmp_path):
    """Binarizing post-processing -> instance labels, stitched across tiles: the components of the whole mask."""
    zarr = pytest.importorskip("zarr")
    from ome_zarr_models.v05 import ImageLabel
    from scipy import ndimage

    path, pixels = image
    (packages / "instances.zip").unlink(missing_ok=True)
    subprocess.run(
        ["zip", "-qj", str(packages / "instances.zip"), *map(str, (packages / "instances").iterdir())], check=True
    )
    nahual.weights.add("bioimageio", "instances", packages / "instances.zip")  # a zip in the cache, by its name
    with onnx_server.client() as client:
        handle = client.load("bioimageio", source="instances")
        assert handle.contract.output == "labels" and handle.contract.channels == 1
        result = _apply(handle, path, "cells", tile=TILE)
    ImageLabel.from_zarr(zarr.open_group(path / "labels" / "cells", mode="r"))
    labels = zarr.open_group(path / "labels" / "cells", mode="r")["0"][0]
    whole, count = ndimage.label(reference("onnx", packages / "instances", pixels[0], tmp_path)[0] > 0)
    pairs = np.unique(np.stack([whole.ravel(), labels.ravel().astype(np.int64)]), axis=1)
    assert count > 20 and result["final"]["merged"] > 0  # objects crossed tile borders and were stitched
    assert pairs.shape[1] == count + 1 and len(np.unique(pairs[1])) == pairs.shape[1]  # one to one, background too


def test_whole_image_statistics_get_whole_frames_unless_tiles_may_have_their_own(
    onnx_server, packages, image, tmp_path
):
    zarr = pytest.importorskip("zarr")
    path, pixels = image
    with onnx_server.client() as client:
        handle = client.load("bioimageio", source=str(packages / "per-sample"))
        assert not handle.contract.tiling
        result = _apply(handle, path, "per-sample", tile=TILE)
        assert client.load("bioimageio", source=str(packages / "per-sample"), per_tile_statistics=True).contract.tiling
    assert result["blocks"] == SHAPE[0]  # one whole frame each, whatever the tile option
    prediction = zarr.open_group(path / "predictions" / "per-sample", mode="r")["0"][1]
    np.testing.assert_allclose(prediction, reference("onnx", packages / "per-sample", pixels[1], tmp_path), atol=1e-5)


def test_info_the_load_reply_and_the_output_name_the_package(onnx_server, packages):
    with onnx_server.client() as client:
        handle = client.load("bioimageio", source=str(packages / "conv-onnx"))
        about = handle.contract.about
        assert {k: about[k] for k in ("name", "id", "version", "license", "authors")} == {
            "name": "conv-onnx",
            "id": "nahual-test/conv-onnx",
            "version": "1.2.0",
            "license": "MIT",
            "authors": ["Nahual Tests"],
        }
        assert about["cite"] == [{"text": "nahual test package", "url": "https://example.org/nahual"}]
        loaded = [i for i in client.info()["instances"] if i["id"] == handle.instance_id]
    assert loaded and loaded[0]["about"] == about


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ("tf-only", "ConfigError", "has weights in tensorflow_js, which no nahual environment runs"),
        ("torch-only", "ConfigError", "load it with model 'bioimageio-torch' (environment envs/bioimageio-torch)"),
        ("broken/rdf.yaml", "ConfigError", "is not valid: name: Value should have at least 5 items"),
        ("syntax.yaml", "ConfigError", "does not read: expected ',' or ']', but got '<stream end>' (line 3"),
        ("nowhere", "WeightsError", "nowhere does not exist"),
        ("remote", "WeightsError", "points at its onnx weights on the web (https://example.org/w.onnx)"),
    ],
)
def test_what_cannot_load_says_so_in_one_line(onnx_server, packages, source, error, message):
    (packages / "broken").mkdir(exist_ok=True)
    (packages / "broken" / "rdf.yaml").write_text("format_version: 0.5.4\ntype: model\nname: x\n")
    (packages / "syntax.yaml").write_text("format_version: 0.5.4\ntype: [model\n")
    (packages / "remote").mkdir(exist_ok=True)
    rdf = (
        (packages / "conv-onnx" / "rdf.yaml")
        .read_text()
        .replace("source: weights.onnx", "source: 'https://example.org/w.onnx'")
    )
    (packages / "remote" / "rdf.yaml").write_text(rdf)
    with onnx_server.client() as client, pytest.raises(RemoteError) as caught:
        client.load("bioimageio", source=str(packages / source))
    assert caught.value.remote_type.endswith(error) and message in caught.value.remote_message
    assert "\n" not in caught.value.remote_message


def test_a_cache_name_that_is_not_there_names_the_commands_that_fill_it(onnx_server, caches):
    with onnx_server.client() as client, pytest.raises(RemoteError) as caught:
        client.load("bioimageio", source="affable-shark")
    assert "run `nahual weights fetch bioimageio affable-shark` on a machine with internet" in str(caught.value)
    assert not (caches["weights"] / "bioimageio" / "affable-shark").exists()


def test_contract_tests_pass_in_the_onnx_env(packages):
    env = {**os.environ, "NAHUAL_TEST_BIOIMAGEIO_PACKAGE": str(packages / "conv-onnx")}
    argv = [str(_env_python("onnx")), "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*argv, "-k", "TestBioImageIOContract"], capture_output=True, text=True, cwd=ROOT, timeout=600, env=env
    )
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0 and summary.startswith("17 passed, 2 skipped"), done.stdout[
        -3000:
    ]  # any axes; no labels


@pytest.mark.slow
def test_a_workflow_step_runs_a_package_and_its_labels_read_like_the_default_chain_s(packages, tmp_path):
    """``model: bioimageio`` with ``params: {source: ...}`` in a config, then regionprops of its labels.

    The instances package, its fixed normalisation set for the demo's intensities (background about 320,
    nuclei about 1020), so that its mask holds objects.
    """
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("snakemake")
    import anndata
    from ome_zarr_models.v05 import ImageLabel
    from test_workflow import STORE, assert_nothing_left, copy_workflow
    from workflow_runs import finished_run

    package = tmp_path / "demo-instances"
    shutil.copytree(packages / "instances", package)
    rdf = (package / "rdf.yaml").read_text()
    (package / "rdf.yaml").write_text(rdf.replace(f"mean: {MEAN}, std: {STD}", "mean: 530.0, std: 177.0"))
    workdir = copy_workflow(
        tmp_path / "wf",
        {
            "models": {"bioimageio": {"params": {"source": str(package), "device": "cpu"}}},
            "chain": [
                {"name": "cells", "model": "bioimageio", "input": "image", "kind": "labels"},
                {"name": "features", "model": "regionprops", "input": "cells"},
            ],
            "streaming": {"tile": {"y": 128, "x": 128}, "halo": None, "shards": 1, "inflight": 2, "channel": 0},
        },
    )
    with finished_run(workdir, "--cores", "2"):
        pass
    assert_nothing_left(workdir)
    assert "envs/bioimageio-onnx/.venv/bin/python" in (workdir / "results" / "envs" / "bioimageio.txt").read_text()
    group = zarr.open_group(workdir / STORE, mode="r")
    ImageLabel.from_zarr(group["labels/cells"])
    cells = group["labels/cells/0"][...]
    assert cells.dtype == np.uint32 and cells.shape == (8, 256, 256) and cells.max() > 0
    np.testing.assert_array_equal(group["labels/cells/1"][...], cells[:, ::2, ::2])
    assert group["labels/cells"].attrs["nahual"]["about"]["source"] == str(package / "rdf.yaml")
    table = anndata.io.read_elem(group["tables/features"])
    assert table.n_obs == sum(len(np.unique(frame)) - 1 for frame in cells)


if IN_ENV:  # collected only there: test_contract_tests_pass_in_the_onnx_env runs it
    from nahual.models.bioimageio import BioImageIO
    from nahual.testing import ModelTests

    class TestBioImageIOContract(ModelTests):
        """nahual's model contract, in the environment, with the ONNX test package."""

        model_class = BioImageIO
        load_params: ClassVar[dict[str, Any]] = {"source": os.environ.get("NAHUAL_TEST_BIOIMAGEIO_PACKAGE", "")}

        def make_payload(self) -> dict:
            return {"image": np.random.default_rng(0).random((1, 40, 56), np.float32), "axes": "cyx"}

        def test_a_load_param_cannot_change_at_call_time(self, model) -> None:
            with pytest.raises(ParamError, match="fixed at load"):
                model.process(self.make_payload(), per_tile_statistics=True)

        def test_a_tile_of_any_size_comes_back_in_its_own_size(self, model) -> None:
            for shape in ((1, 5, 7), (1, 16, 16), (1, 33, 100)):
                out = model.process({"image": np.ones(shape, np.float32), "axes": "cyx"})["array"]
                assert out.shape == (2, *shape[1:]) and out.dtype == np.float32

        def test_a_package_of_another_format_names_its_model(self) -> None:
            with pytest.raises(ConfigError, match="has onnx weights; model 'bioimageio-torch' runs torchscript"):
                from nahual.models.bioimageio import BioImageIOTorch

                BioImageIOTorch().load(**self.load_params)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
