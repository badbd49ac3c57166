"""A ``--local`` run and a served run of every zoo model give identical outputs.

Local: :class:`nahual.stream.LocalModel`, the request handler behind an
in-process transport. Served: a real ``python -m nahual serve`` process (the
``serve`` fixture) in this environment, so that the package versions are the
same and any difference would come from the two paths themselves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Served

import nahual
from nahual.demo import DemoData, DemoSize, make_demo, write_demo

zarr = pytest.importorskip("zarr")

from nahual.stream import LocalModel, apply  # noqa: E402

pytestmark = pytest.mark.slow

LIMITS = nahual.Timeout(connect=10.0, request=120.0, startup=120.0)


@pytest.fixture(scope="module")
def scene() -> DemoData:
    return make_demo(DemoSize(frames=4, height=96, width=96, nuclei=6), seed=3)


def payloads(scene: DemoData) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per zoo model: load params and one payload."""
    return {
        "echo": ({}, {"image": scene.image[0], "n": [1, 2.5, None], "axes": "cyx"}),
        "threshold": ({"sigma": 1.5}, {"image": scene.image[2].astype(np.float32), "axes": "cyx"}),
        "laptrack": ({}, {"labels": scene.labels, "axes": "tyx"}),
        "regionprops": ({}, {"image": scene.image[:3], "labels": scene.labels[:3], "axes": "tcyx"}),
    }


def assert_identical(local: Any, served: Any, where: str = "result") -> None:
    """Same structure, same array dtypes and shapes, same values (NaNs in the same places)."""
    assert type(local) is type(served), f"{where}: {type(local).__name__} vs {type(served).__name__}"
    if isinstance(local, dict):
        assert list(local) == list(served), f"{where}: keys {list(local)} vs {list(served)}"
        for key in local:
            assert_identical(local[key], served[key], f"{where}[{key!r}]")
    elif isinstance(local, list):
        assert len(local) == len(served), where
        for index, (a, b) in enumerate(zip(local, served)):
            assert_identical(a, b, f"{where}[{index}]")
    elif isinstance(local, np.ndarray):
        assert (local.dtype, local.shape) == (served.dtype, served.shape), where
        np.testing.assert_array_equal(local, served, err_msg=where)
    else:
        assert local == served, where


@pytest.mark.parametrize("model", ["echo", "threshold", "laptrack", "regionprops"])
def test_every_zoo_model_answers_alike_locally_and_served(
    model: str, scene: DemoData, serve: Callable[..., Served]
) -> None:
    params, payload = payloads(scene)[model]
    with LocalModel(model, params) as local:
        local_result = local(payload)
        local_contract = local.contract
    served = serve("--preload", model, "--params", json.dumps(params))
    with nahual.Client(served.address, timeout=LIMITS) as client:
        handle = client.load(model, **params)
        served_result = handle(payload)
        assert handle.contract == local_contract
    assert_identical(local_result, served_result)


def test_threshold_streams_alike_locally_and_served(
    scene: DemoData, serve: Callable[..., Served], tmp_path: Path
) -> None:
    store = write_demo(tmp_path / "demo.zarr", scene)
    with LocalModel("threshold", {"sigma": 1.5}) as local:
        apply(local, store, "local", progress=False)
    served = serve("--preload", "threshold")
    with nahual.Client(served.address, timeout=LIMITS) as client:
        apply(client.load("threshold", sigma=1.5), store, "served", progress=False)
    local_labels = zarr.open_group(f"{store}/labels/local", mode="r")["0"][...]
    served_labels = zarr.open_group(f"{store}/labels/served", mode="r")["0"][...]
    assert local_labels.max() > 0  # something was segmented
    assert local_labels.dtype == served_labels.dtype
    np.testing.assert_array_equal(local_labels, served_labels)
    local_run = zarr.open_group(f"{store}/labels/local", mode="r").attrs["nahual"]
    served_run = zarr.open_group(f"{store}/labels/served", mode="r").attrs["nahual"]
    assert (local_run["model"], local_run["params"]) == (served_run["model"], served_run["params"])
