"""The earlier wire against the real thing: the PyPI nahual 0.0.8 in ``envs/nahual-0.0.8``, on either side.

(a) 0.0.8's own client, ``dispatch_setup_process``, against our server started
with ``legacy_wire`` (echo, threshold, laptrack, and Cellpose and DINOv2 in
their environments); (b) servers written as the upstream model servers are
(0.0.8's ``responder`` with a small ``setup``, ``tests/legacy_env.py``)
driven by our client and by ``nahual apply``. Skipped, with the reason, when
the environment is not prepared (``.ci/install`` prepares it:
``nahual env-prepare uv:envs/nahual-0.0.8``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pynng
import pytest
from conftest import ROOT, TESTS, wait_until

import nahual
from nahual._legacy_wire import encode_array
from nahual.cli import main
from nahual.errors import RemoteError, TimeoutError, TransportError
from nahual.launcher import parse_env_spec

SPEC = "uv:envs/nahual-0.0.8"
HELPER = TESTS / "legacy_env.py"
THRESHOLD = {"nahual_model": "threshold", "threshold": 0.5, "sigma": 0, "min_size": 1, "split": False}


@pytest.fixture(scope="module")
def python() -> str:
    """The 0.0.8 environment's interpreter, or a skip that says how to prepare it."""
    backend = parse_env_spec(f"uv:{ROOT / 'envs' / 'nahual-0.0.8'}")
    if not backend.is_synced():
        pytest.skip(f"the nahual 0.0.8 environment is not prepared: run .ci/install (nahual env-prepare {SPEC})")
    return backend.python()[0]


def their_client(python: str, address: str, model: str, setup: dict, data: np.ndarray, out: Path, *extra: str):
    """Run 0.0.8's client as aliby does (a process of its own); returns the finished process."""
    np.save(out.with_suffix(".in.npy"), data)
    argv = [python, HELPER, "client", address, model, json.dumps(setup), out.with_suffix(".in.npy"), out, *extra]
    return subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen, code: int = 0) -> str:
    output = process.communicate(timeout=60)[0]
    assert process.returncode == code, output[-3000:]
    return output


@pytest.fixture
def server(ipc_address) -> Iterator[nahual.Server]:
    with nahual.Server(ipc_address("ours"), legacy_wire=True, workers=4) as running:
        running.load("echo", {})
        yield running


# -- (a) their client, our server --------------------------------------------------------
def test_their_client_runs_our_echo_threshold_and_laptrack(python, server, tmp_path):
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    finished(their_client(python, server.address, "echo", {}, data, tmp_path / "echo.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "echo.npy"), data)
    image = np.zeros((1, 24, 24), np.uint16)
    image[0, 2:6, 2:6] = image[0, 12:18, 12:18] = 1
    output = finished(their_client(python, server.address, "cellpose", THRESHOLD, image, tmp_path / "l.npy",
                                   "--repeat", "3"))  # fmt: skip
    labels = np.load(tmp_path / "l.npy")
    assert labels.shape == (1, 24, 24) and labels.max() == 2 and (labels > 0).sum() == 16 + 36
    setups = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len({s["instance"] for s in setups}) == 1  # aliby's setup per position loads nothing again
    masks = np.zeros((3, 24, 24), np.float32)
    masks[:, 2:6, 2:6], masks[1:, 12:18, 12:18] = 1, 2
    finished(their_client(python, server.address, "trackastra", {"nahual_model": "laptrack"}, np.stack([masks, masks]),
                          tmp_path / "t.json"))  # fmt: skip
    edges = json.loads((tmp_path / "t.json").read_text())
    links = set(zip(edges["source_frame"], edges["source_label"], edges["target_frame"], edges["target_label"]))
    assert links == {(0, 1, 1, 1), (1, 1, 2, 1), (1, 2, 2, 2)} and edges["weight"] == [1.0] * 3


def test_their_client_fails_on_our_errors_with_what_we_said(python, server, tmp_path):
    out = tmp_path / "o.npy"
    bad_setup = finished(their_client(python, server.address, "cellpose", {"sigmaa": 2}, np.zeros(2), out), code=3)
    assert "FAILED JSONDecodeError" in bad_setup  # 0.0.8 cannot read the ! envelope: it raises, never returns {}
    four_d = np.zeros((2, 1, 8, 8), np.float32)
    bad_array = finished(their_client(python, server.address, "cellpose", THRESHOLD, four_d, out), code=3)
    assert "(Z, Y, X)" in bad_array and "FAILED" in bad_array  # it prints the reply's first bytes, then raises


def test_their_request_slower_than_the_resend_time_runs_once(python, ipc_address, tmp_path):
    log = tmp_path / "calls"
    with nahual.Server(ipc_address("resend"), legacy_wire=True) as server:
        server.load("legacy_models:Slow", {"log": str(log), "delay_s": 1.0})
        data = np.arange(5.0)
        finished(their_client(python, server.address, "echo", {}, data, tmp_path / "o.npy", "--resend-ms", "250"))
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), data)
    assert log.read_text().count("call") == 1


def test_two_of_their_clients_at_once(python, ipc_address, tmp_path):
    with nahual.Server(ipc_address("two"), legacy_wire=True) as server:
        server.load("legacy_models:AddOne", {})
        running = [
            their_client(python, server.address, "x", {}, np.full(100, n), tmp_path / f"{n}.npy") for n in (0, 1)
        ]
        for process in running:
            finished(process)
    assert [int(np.load(tmp_path / f"{n}.npy")[0]) for n in (0, 1)] == [1, 2]


# -- (b) upstream-style servers, our client ----------------------------------------------
@pytest.fixture
def upstream(python, short_dir) -> Iterator[Callable[[str], tuple[str, subprocess.Popen]]]:
    """``upstream(mode)`` -> (its address, its process): a 0.0.8 responder server (killed at teardown)."""
    started: list[subprocess.Popen] = []

    def start(mode: str) -> tuple[str, subprocess.Popen]:
        address, log = f"ipc://{short_dir / mode}.sock", short_dir / f"{mode}.log"
        with open(log, "w") as handle:
            process = subprocess.Popen([python, str(HELPER), "serve", address, mode], stdout=handle, stderr=handle)
        started.append(process)
        wait_until(lambda: "READY" in log.read_text(), 20, f"the {mode} server to listen")
        return address, process

    yield start
    for process in started:
        process.kill()
        process.wait(10)


def test_our_client_drives_upstream_labels_embeddings_and_tracks(upstream):
    labels_at, _ = upstream("labels")
    with nahual.Client(f"nahual0+{labels_at}", timeout=10) as client:
        image = np.zeros((20, 30), np.float32)
        image[2:5, 2:5], image[9:12, 20:25] = 1, 4
        np.testing.assert_array_equal(client.load("cellpose")({"image": image, "axes": "yx"})["labels"], image)
        assert client.info()["setup"] == {"mode": "labels"}
    embeddings_at, _ = upstream("embeddings")
    with nahual.Client(f"nahual0+{embeddings_at}", timeout=10) as client:
        out = client.load("dinov2")({"image": np.ones((4, 20, 30), np.float32), "axes": "cyx"})
        assert out["embedding"].shape == (1, 4) and out["uns"]["earlier_wire"]["padded_yx"] == [28, 42]
    tracks_at, _ = upstream("tracks")
    with nahual.Client(f"nahual0+{tracks_at}", timeout=10) as client:
        labels = np.zeros((3, 10, 10), np.uint32)
        labels[:, 1:3, 1:3], labels[1:, 6:8, 6:8] = 1, 2
        out = client.load("trackastra")({"image": labels.astype(np.float32), "labels": labels, "axes": "tyx"})
        assert len(out["edges"]["source"]) == 3 and out["tracks"]["track_id"].tolist() == [1, 2]


def test_nahual_apply_writes_outputs_through_upstream_servers(upstream, tmp_path, capsys):
    zarr = pytest.importorskip("zarr")
    from nahual.stream import write_image, write_labels

    data = np.zeros((2, 2, 64, 64), np.uint16)
    data[:, 0, 10:20, 10:20], data[:, 0, 40:50, 30:45] = 1, 2
    path = write_image(tmp_path / "img.zarr", data, "tcyx", chunks=(1, 1, 32, 32))
    labels_at, _ = upstream("labels")
    assert main(["apply", str(path), "seg", "--model", "cellpose", "--server", f"nahual0+{labels_at}", "--channel",
                 "0", "--tile", "y=32,x=32", "--halo", "8", "--quiet"]) == 0  # fmt: skip
    written = zarr.open_group(f"{path}/labels/seg", mode="r")["0"][:]
    np.testing.assert_array_equal(written.reshape(2, 64, 64) > 0, data[:, 0] > 0)
    write_labels(path, "truth", data[:, 0].astype(np.uint32), "tyx")
    tracks_at, _ = upstream("tracks")
    assert main(["apply", f"{path}/labels/truth", "trk", "--model", "trackastra", "--server", f"nahual0+{tracks_at}",
                 "--channel", "0", "--quiet"]) == 0  # fmt: skip
    assert '"edges": 2, "nodes": 4, "tracks": 2' in capsys.readouterr().err  # the two objects, followed
    embeddings_at, _ = upstream("embeddings")
    assert main(["apply", str(path), "emb", "--model", "dinov2", "--server", f"nahual0+{embeddings_at}",
                 "--quiet"]) == 0  # fmt: skip
    assert '"rows": 2' in capsys.readouterr().err  # one embedding per frame
    assert zarr.open_group(f"{path}/tables/emb", mode="r")["X"].shape == (2, 2)


def test_upstream_failures_become_errors_within_their_time(upstream, short_dir):
    failing, _ = upstream("error")
    with nahual.Client(f"nahual0+{failing}?model=labels", timeout=10) as client:
        with pytest.raises(RemoteError, match="replied {}"):
            client.load("x")({"image": np.ones((8, 8), np.float32), "axes": "yx"})
    slow, process = upstream("slow")
    with nahual.Client(f"nahual0+{slow}?model=array", timeout=30) as client:
        handle = client.load("x", delay_s=20, log=str(short_dir / "log"))
        future = handle.submit(np.ones(3))
        wait_until(lambda: (short_dir / "log").exists(), 10, "the slow call to start")
        process.kill()  # dies mid-request
        start = time.monotonic()
        with pytest.raises(TransportError, match="closed the connection or died"):
            future.result(10)
        assert time.monotonic() - start < 5
    with pytest.raises(TimeoutError, match="could not connect"):
        nahual.Client(f"nahual0+ipc://{short_dir}/nobody.sock", timeout=0.5)


def test_a_slow_upstream_call_runs_once(upstream, short_dir):
    slow, _ = upstream("slow")
    log = short_dir / "calls"
    with nahual.Client(f"nahual0+{slow}?model=array", timeout=10) as client:
        handle = client.load("x", delay_s=1.2, log=str(log))
        np.testing.assert_array_equal(handle(np.arange(3.0)), np.arange(3.0))
        assert log.read_text().count("call") == 1
        # nng's resend is off on our socket (-1: never) ...
        assert client.transport._socket._socket.resend_time == -1  # type: ignore[union-attr]
    # ... where a client that resends (as every 0.0.8 client does, after 60 s) runs it again and again.
    with pynng.Req0(dial=slow, resend_time=300, recv_timeout=10_000) as sock:
        sock.send(encode_array(np.array([1.0])).to_bytes())
        sock.recv()
    wait_until(lambda: log.read_text().count("call") >= 3, 10, "the resent copies to run")


# -- (a) again, with the deep models in their own environments ---------------------------
def _deep_env(spec: str) -> str:
    backend = parse_env_spec(spec)
    if not backend.is_synced():
        pytest.skip(f"{spec} is not prepared: run .ci/install (nahual env-prepare '{spec}')")
    return backend.python()[0]


def _run_in(python: str, *argv: str) -> None:
    done = subprocess.run([python, *argv], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_their_client_runs_our_cellpose(python, serve, tmp_path):
    spec = f"uv:{ROOT / 'envs' / 'cellpose'}?torch=cpu"
    deep = _deep_env(spec)
    weights = tmp_path / "random"  # an untrained CPnet: the layout is what is tested, not the segmentation
    _run_in(deep, "-c", "import sys; from cellpose import models; "
            "models.CellposeModel(gpu=False, pretrained_model=False, mkldnn=False).net.save_model(sys.argv[1])",
            str(weights))  # fmt: skip
    cache = {"NAHUAL_WEIGHTS": str(tmp_path / "cache")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAHUAL_WEIGHTS", cache["NAHUAL_WEIGHTS"])
        assert main(["weights", "add", "cellpose", "random", str(weights)]) == 0
    params = {"model": "random", "device": "cpu", "threads": 1, "diameter": 30.0}
    served = serve("--env", spec, "--preload", "cellpose", "--params", json.dumps(params), "--legacy-wire",
                   env=cache, ready_timeout=120)  # fmt: skip
    image = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)
    finished(their_client(python, served.address, "cellpose", {}, image, tmp_path / "l.npy"))
    labels = np.load(tmp_path / "l.npy")
    assert labels.shape == (1, 64, 64) and labels.dtype.kind == "u"


def test_their_client_runs_our_dinov2(python, serve, tmp_path):
    spec = f"uv:{ROOT / 'envs' / 'dino'}?torch=cpu"
    deep = _deep_env(spec)
    hub = tmp_path / "torch" / "hub"
    _run_in(deep, str(TESTS / "dino_env.py"), "hub-v2", str(hub / "facebookresearch_dinov2_main"), str(tmp_path / "w"))
    env = {"NAHUAL_WEIGHTS": str(tmp_path / "cache"), "TORCH_HOME": str(tmp_path / "torch")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAHUAL_WEIGHTS", env["NAHUAL_WEIGHTS"])
        name = "dinov2_vits14_pretrain.pth"
        assert main(["weights", "add", "dinov2", name, str(tmp_path / "w" / name)]) == 0
    served = serve("--env", spec, "--preload", "dinov2", "--params", json.dumps({"threads": 1, "size": 28}),
                   "--legacy-wire", env=env, ready_timeout=120)  # fmt: skip
    pixels = np.random.default_rng(0).random((2, 4, 1, 28, 28)).astype(np.float32)  # (N, C, Z, Y, X)
    finished(their_client(python, served.address, "dinov2", {}, pixels, tmp_path / "e.npy"))
    embedding = np.load(tmp_path / "e.npy")
    assert embedding.shape == (2, 2 * 32) and embedding.dtype == np.float32  # 2 triplets of 4 channels, width 32


# -- (b) in the workflow: models.NAME.server --------------------------------------------
@pytest.mark.slow
def test_a_workflow_step_runs_on_an_upstream_server_it_does_not_start(upstream, tmp_path):
    pytest.importorskip("snakemake")
    zarr = pytest.importorskip("zarr")
    for name in ("workflow", "rules", "profiles", "config.yaml"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, tmp_path / name)
    address, _ = upstream("labels")
    config = {
        "models": {"seg": {"model": "cellpose", "server": f"nahual0+{address}", "params": {"threshold": 600}}},
        "chain": [{"name": "nuclei", "model": "seg", "input": "image"}],
        "streaming": {"tile": {"y": 128, "x": 128}, "halo": 8, "shards": 2, "inflight": 4, "channel": 0},
    }
    (tmp_path / "legacy.yaml").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "legacy.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "results" / "servers").exists()  # no server job: the step used the running one
    labels = zarr.open_group(f"{tmp_path}/resources/demo.zarr/labels/nuclei", mode="r")["0"][:]
    assert labels.max() > 0
