"""Each zoo model through a real server in its own uv environment (the catalog's default).

These tests sync the environments (``uv sync --locked``; a few seconds each with a
warm uv cache, longer on a cold one), start ``python -m nahual serve`` in each on
an ipc address, and compare the answers with in-process calls. ``info()``
shows that the three environments really differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nahual
from nahual.catalog import default_env
from nahual.demo import make_demo

pytestmark = pytest.mark.slow

#: Limits for slow CI machines: the startup includes importing numpy and the model's packages.
TIMEOUT = nahual.Timeout(connect=10.0, request=120.0, startup=120.0)


@pytest.fixture(scope="module")
def scene():
    return make_demo(seed=0)


@pytest.fixture(scope="module")
def servers():
    """One server per zoo model, each in the model's default environment, model preloaded."""
    started = {}
    try:
        for model in ("threshold", "laptrack", "regionprops"):
            started[model] = nahual.launch(default_env(model), preload=model, timeout=TIMEOUT)
        yield started
    finally:
        for server in started.values():
            server.stop()


def installed(info: dict) -> dict[str, str]:
    """Distribution -> version of what the server's environment has (missing ones left out)."""
    return {name.lower(): version for name, version in info["packages"].items() if version is not None}


def test_threshold_server_segments_like_an_in_process_call(scene, servers):
    from nahual.models.threshold import Threshold

    local = Threshold()
    local.load(sigma=1.5)
    with servers["threshold"].client() as client:
        handle = client.load("threshold", sigma=1.5)
        remote = handle({"image": scene.image[2].astype(np.float32), "axes": "cyx"})
        assert handle.contract == Threshold.contract
    expected = local.process({"image": scene.image[2].astype(np.float32), "axes": "cyx"})
    assert remote["labels"].dtype == np.uint32 and np.array_equal(remote["labels"], expected["labels"])


def test_laptrack_server_tracks_like_an_in_process_call(scene, servers):
    from nahual.models.laptrack import LapTrack

    local = LapTrack()
    local.load()
    with servers["laptrack"].client() as client:
        remote = client.load("laptrack")({"labels": scene.labels, "axes": "tyx"})
    expected = local.process({"labels": scene.labels, "axes": "tyx"})
    for key in ("source", "target"):
        assert np.array_equal(remote["edges"][key], expected["edges"][key])
    assert np.array_equal(remote["track_id"], expected["track_id"])
    assert np.array_equal(remote["tracks"]["parent"], expected["tracks"]["parent"])


def test_regionprops_server_measures_like_an_in_process_call(scene, servers):
    from nahual.models.regionprops import RegionProps

    local = RegionProps()
    local.load()
    payload = {"image": scene.image[:3], "labels": scene.labels[:3], "axes": "tcyx"}
    with servers["regionprops"].client() as client:
        remote = client.load("regionprops")(payload)["table"]
    expected = local.process(payload)["table"]
    assert list(remote) == list(expected)
    for column, values in expected.items():
        assert np.allclose(remote[column], values), column


def test_a_wrong_payload_is_refused_by_the_remote_model_with_the_expected_axes(servers):
    with servers["threshold"].client() as client, pytest.raises(nahual.RemoteError, match="expects axes cyx or czyx"):
        client.load("threshold")({"image": np.zeros((2, 2, 8, 8), np.float32), "axes": "tcyx"})


def test_the_three_environments_really_differ(servers):
    infos = {}
    for model, server in servers.items():
        with server.client() as client:
            infos[model] = client.info()
    threshold, laptrack, regionprops = (installed(infos[m]) for m in ("threshold", "laptrack", "regionprops"))
    assert "laptrack" in laptrack and "laptrack" not in threshold and "laptrack" not in regionprops
    assert "scikit-image" in threshold and "scikit-image" in regionprops
    assert threshold["numpy"].split(".")[0] == "2" and regionprops["numpy"].split(".")[0] == "1"
    assert regionprops["scikit-image"] != threshold["scikit-image"]
    for model, info in infos.items():
        assert info["models"][model]["contract"]["output"] in ("labels", "tracks", "features")
        assert model in [instance["model"] for instance in info["instances"]]  # preloaded
        assert Path(info["executable"]).parent.parent == Path(default_env(model).split(":", 1)[1]) / ".venv"


def test_a_model_whose_packages_are_missing_is_listed_unavailable_and_refused_at_load(servers):
    with servers["threshold"].client() as client:
        assert client.info()["models"]["laptrack"]["unavailable"] == "missing packages: laptrack"
        with pytest.raises(nahual.RemoteError, match="cannot run here: missing packages laptrack") as caught:
            client.load("laptrack")
    assert caught.value.remote_type == "ConfigError" and caught.value.operation == "load"
