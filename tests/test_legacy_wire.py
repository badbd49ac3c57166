"""The earlier nahual wire: its codec, our server answering it (raw messages built by hand), our client of it.

The messages here are written byte by byte from the description in
``docs/protocol.md`` (*The earlier wire*), not with our encoder, so the
tests check the layout itself. The real 0.0.8 package on either side is
``tests/test_legacy_upstream.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pynng
import pytest
from conftest import ROOT

import nahual
from nahual import _legacy_wire as wire
from nahual import _protocol as protocol
from nahual._legacy_layouts import LAYOUTS
from nahual.client._legacy import parse_legacy_address
from nahual.errors import ConfigError, ContractError, PayloadError, ProtocolError, RemoteError, TimeoutError
from nahual.model import Contract

SHM = Path("/dev/shm")
THRESHOLD = {"nahual_model": "threshold", "threshold": 0.5, "sigma": 0, "min_size": 1, "split": False}


def raw_array(array: np.ndarray) -> bytes:
    """An array message as the description gives it: dtype char, ndim, big-endian uint16 dims, C-order bytes."""
    return (
        array.dtype.char.encode()
        + bytes([array.ndim])
        + b"".join(struct.pack(">H", n) for n in array.shape)
        + (np.ascontiguousarray(array).tobytes())
    )


def exchange(address: str, message: bytes, resend_ms: int = -1, timeout_ms: int = 20_000) -> bytes:
    """One request as a 0.0.8 client sends it: a fresh Req0 socket per call."""
    with pynng.Req0(dial=address, recv_timeout=timeout_ms, resend_time=resend_ms) as sock:
        sock.send(message)
        return sock.recv()


def error_of(reply: bytes) -> dict:
    assert reply.startswith(b"!"), reply[:80]
    return json.loads(reply[1:])


# -- the codec ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "int64", "float32", "float64", "bool", "complex64"])
def test_arrays_are_laid_out_as_described_and_decode_to_read_only_views(dtype):
    array = (np.arange(24) % 5).astype(dtype).reshape(2, 3, 4)
    encoded = wire.encode_array(array).to_bytes()
    assert encoded == raw_array(array)
    decoded = wire.decode_array(encoded)
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == array.dtype and not decoded.flags.writeable and decoded.flags.aligned


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((1, 65_536), np.uint8), "dimensions up to 65535"),
        (np.zeros(3, ">f4"), "byte order"),
        (np.array(["a", "b"]), "numeric arrays only"),
        (np.array([{}, 1], dtype=object), "numeric arrays only"),
    ],
    ids=["dim-over-65535", "big-endian", "str", "object"],
)
def test_what_the_wire_cannot_carry_is_refused_before_sending(array, match):
    with pytest.raises(PayloadError, match=match):
        wire.encode_array(array)


@pytest.mark.parametrize(
    "message, match",
    [
        (b"f", "at least 2 bytes"),
        (b"f\x02\x00", "needs 6 bytes"),
        (b"f\x01\x00\x03" + b"\x00" * 8, "needs 12 bytes"),
        (b"S\x01\x00\x01a", "not a numeric dtype"),
        (b"W\x00", "unknown dtype code"),
    ],
)
def test_a_broken_array_message_is_a_protocol_error(message, match):
    with pytest.raises(ProtocolError, match=match):
        wire.decode_array(message)


def test_first_bytes_tell_the_messages_apart():
    assert wire.message_kind(protocol.encode(protocol.Kind.REQUEST, 1, {"op": "ping"})) == "v1"
    kinds = {b"{}": "setup", b"!{}": "error", wire.SHM_REQUEST + b"{}": "shm", wire.SHM_REPLY: "shm-reply"}
    assert {message: wire.message_kind(message) for message in kinds} == kinds
    assert wire.message_kind(raw_array(np.zeros((72, 3), np.uint16))) == "array"


def test_addresses_name_the_layout_and_the_setup():
    parsed = parse_legacy_address("nahual0+ipc:///tmp/x.ipc?model=dinov2&setup=skip")
    assert (parsed.target, parsed.model, parsed.setup) == ("ipc:///tmp/x.ipc", "dinov2", False)
    for bad, match in (("nahual0+ipc:///x?model=vit", "neither a known"),
                       ("nahual0+ipc:///x?colour=1", "unknown option"),
                       ("nahual0+http://x", "must start with")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            parse_legacy_address(bad)


# -- our server --------------------------------------------------------------------------
@pytest.fixture
def server(ipc_address) -> Iterator[nahual.Server]:
    with nahual.Server(ipc_address("legacy"), legacy_wire=True, workers=4) as running:
        running.load("echo", {})
        yield running


def test_setups_reuse_one_instance_and_arrays_go_to_the_model_set_up_last(server):
    first = json.loads(exchange(server.address, b"{}"))
    assert json.loads(exchange(server.address, b"{}"))["instance"] == first["instance"]
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    assert exchange(server.address, raw_array(array)) == raw_array(array)  # echo
    labelled = json.loads(exchange(server.address, json.dumps({**THRESHOLD, "gpu": True}).encode()))
    assert labelled["model"] == "threshold" and labelled["ignored"] == ["gpu"]
    image = np.zeros((1, 12, 12), np.float32)
    image[0, 1:4, 1:4] = image[0, 7:10, 7:10] = 1
    labels = wire.decode_array(exchange(server.address, raw_array(image)))
    assert labels.shape == (1, 12, 12) and sorted(np.unique(labels).tolist()) == [0, 1, 2]
    instances = [i["model"] for i in server.handler.info()["instances"]]
    assert instances.count("threshold") == 1 and instances.count("echo") == 1


def test_failures_come_back_in_the_error_envelope_naming_the_stage(server):
    loading = error_of(exchange(server.address, json.dumps({"sigmaa": 1}).encode()))
    assert "sigmaa" in loading["error"] and loading["stage"] == "Model loading"
    exchange(server.address, json.dumps(THRESHOLD).encode())
    processing = error_of(exchange(server.address, raw_array(np.zeros((2, 2, 4, 4), np.float32))))
    assert "(Z, Y, X)" in processing["error"] and processing["stage"] == "Data processing"
    assert "no request" in error_of(exchange(server.address, wire.SHM_REPLY + b"{}"))["error"]


def test_a_setup_cannot_import_modules_the_server_was_not_allowed_to(server):
    reply = error_of(exchange(server.address, json.dumps({"nahual_model": "legacy_models:AddOne"}).encode()))
    assert "--allow-module-models" in reply["error"]


def test_protocol_v1_clients_are_served_on_the_same_address(server):
    with nahual.Client(server.address, timeout=10) as client:
        assert client.load("echo")({"x": np.ones(3)})["x"].tolist() == [1, 1, 1]


def test_a_resent_request_runs_the_model_once(ipc_address, tmp_path):
    log = tmp_path / "calls"
    with nahual.Server(ipc_address("resend"), legacy_wire=True) as server:
        server.load("legacy_models:Slow", {"log": str(log), "delay_s": 1.0})
        array = np.arange(4.0)
        assert exchange(server.address, raw_array(array), resend_ms=200) == raw_array(array)
    assert log.read_text().count("call") == 1  # resent about 4 times while it ran


def test_two_clients_at_once_each_get_their_own_reply(ipc_address):
    with nahual.Server(ipc_address("two"), legacy_wire=True) as server:
        server.load("legacy_models:AddOne", {})
        replies: dict[int, bytes] = {}
        threads = [threading.Thread(target=lambda n=n: replies.__setitem__(n, exchange(server.address,
                   raw_array(np.full(1000, n, np.int32))))) for n in range(2)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert {n: wire.decode_array(r)[0] for n, r in replies.items()} == {0: 1, 1: 2}


def test_the_earlier_wire_is_served_on_ipc_and_loopback_only():
    with pytest.raises(ConfigError, match="no authentication"):
        nahual.Server("tcp://0.0.0.0:5999", token="t", legacy_wire=True)
    nahual.Server("tcp://127.0.0.1:5999", token="t", legacy_wire=True).close()


# -- the shared-memory request -----------------------------------------------------------
@pytest.fixture
def segment() -> Iterator[tuple[str, Path]]:
    name = f"psm_{secrets.token_hex(6)}"
    path = SHM / name
    try:
        yield name, path
    finally:
        path.unlink(missing_ok=True)


def shm_request(name: str, array: np.ndarray, mode: str = "reuse", **changed) -> bytes:
    fields = {"capacity": array.nbytes, "dtype": array.dtype.str, "name": name, "nbytes": array.nbytes,
              "output_mode": mode, "shape": list(array.shape), "token": "ab" * 16, **changed}  # fmt: skip
    return b"\x00NHSM\x01" + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


@pytest.fixture
def add_one(ipc_address) -> Iterator[nahual.Server]:
    with nahual.Server(ipc_address("shm"), legacy_wire=True) as server:
        server.load("legacy_models:AddOne", {})
        yield server


@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm on this machine")
def test_a_shared_memory_request_is_answered_in_the_clients_segment(add_one, segment):
    name, path = segment
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    path.write_bytes(array.tobytes())
    reply = exchange(add_one.address, shm_request(name, array))
    assert reply.startswith(b"\x00NHSR\x01")
    assert json.loads(reply[6:]) == {"dtype": "<i4", "nbytes": 48, "shape": [3, 4], "token": "ab" * 16}
    np.testing.assert_array_equal(np.frombuffer(path.read_bytes(), np.int32).reshape(3, 4), array + 1)
    path.write_bytes(array.tobytes())
    serialized = exchange(add_one.address, shm_request(name, array, mode="serialized"))
    np.testing.assert_array_equal(wire.decode_array(serialized), array + 1)
    assert path.read_bytes() == array.tobytes()  # serialized: the segment is only read


@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm on this machine")
@pytest.mark.parametrize("case", ["size", "name", "link", "field", "owner"])
def test_a_shared_memory_request_failing_a_check_is_refused(add_one, segment, tmp_path, case):
    name, path = segment
    array = np.arange(4, dtype=np.float64)
    path.write_bytes(array.tobytes())
    message, match = shm_request(name, array), ""
    if case == "size":
        message, match = shm_request(name, array, nbytes=16, capacity=16, shape=[2]), "holds 32 bytes"
    elif case == "name":
        message, match = shm_request("../etc/passwd", array), "is not 1-128 of"
    elif case == "link":
        path.unlink()
        (tmp_path / "target").write_bytes(array.tobytes())
        path.symlink_to(tmp_path / "target")
        match = "cannot be opened"
    elif case == "field":
        message, match = shm_request(name, array, extra=1), "exactly the fields"
    elif os.geteuid() == 0:
        os.chown(path, 12345, -1)
        match = "regular file of this user"
    else:
        pytest.skip("only root can give a segment to another user")
    assert match in error_of(exchange(add_one.address, message))["error"]


# -- our client, against our own earlier-wire server -------------------------------------
def test_our_client_drives_an_earlier_wire_server_with_the_layouts(server):
    with nahual.Client(f"nahual0+{server.address}", timeout=10) as client:
        labels_model = client.load("cellpose", **THRESHOLD)
        assert labels_model.contract.axes == ("yx",) and labels_model.contract.output == "labels"
        image = np.zeros((16, 16), np.float32)
        image[2:5, 2:5] = 1
        assert labels_model({"image": image, "axes": "yx"})["labels"].max() == 1
        with pytest.raises(PayloadError, match="dimensions up to 65535"):
            labels_model({"image": np.zeros((1, 70_000), np.float32), "axes": "yx"})
        with pytest.raises(RemoteError, match="sigmaa"):
            client.load("cellpose", nahual_model="threshold", sigmaa=1)
        assert client.info()["setup"]["model"] == "threshold"


def test_a_call_slower_than_its_timeout_fails_with_a_timeout(ipc_address):
    with nahual.Server(ipc_address("slow"), legacy_wire=True) as server:
        server.load("legacy_models:Slow", {"delay_s": 1.0})
        with nahual.Client(f"nahual0+{server.address}?model=array&setup=skip", timeout=10) as client:
            with pytest.raises(TimeoutError):
                client.load("slow")(np.ones(2), timeout=0.3)


# -- the layouts, and the workflow's server key ------------------------------------------
def test_the_labels_layout_max_projects_z_and_numbers_the_objects_again():
    labels = np.zeros((2, 6, 6), np.uint32)
    labels[0, :2, :2], labels[1, 4:, 4:] = 5, 9
    seen = []
    reply = LAYOUTS["labels"].serve(np.zeros((2, 6, 6), np.uint16), Contract(output="labels", dtype="float32"),
                                    lambda payload: seen.append(payload) or {"labels": labels})  # fmt: skip
    assert seen[0]["axes"] == "zyx" and seen[0]["image"].dtype == np.float32
    assert reply.shape == (1, 6, 6) and sorted(np.unique(reply).tolist()) == [0, 1, 2]


def test_the_tracks_layout_refuses_labels_float32_cannot_hold_and_links_to_unknown_objects():
    labels = np.zeros((2, 4, 4), np.uint32)
    labels[:, 1, 1] = 1
    tracks = LAYOUTS["tracks"]
    with pytest.raises(PayloadError, match="exact below"):
        tracks.to_upstream({"image": np.zeros((2, 4, 4), np.float32), "labels": labels + 2**24, "axes": "tyx"})
    edges = {"source_frame": [0], "source_label": [1], "target_frame": [1], "target_label": [7], "weight": [0.1]}
    with pytest.raises(ContractError, match="unknown node ids"):
        tracks.from_upstream(edges, {"labels": labels})


def test_a_bad_server_address_in_the_workflow_config_names_the_key(tmp_path):
    pytest.importorskip("snakemake")
    for name in ("workflow", "rules", "profiles", "config.yaml"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    config = {"models": {"seg": {"model": "cellpose", "server": "nahual0+ipc:///tmp/x.sock?model=vit"}},
              "chain": [{"name": "nuclei", "model": "seg", "input": "image"}]}  # fmt: skip
    (tmp_path / "bad.yaml").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "bad.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode != 0 and "config error at models.seg.server: model='vit'" in done.stdout + done.stderr
