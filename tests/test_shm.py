"""Shared-memory fast path: large arrays skip nng over ipc, segments are reused only once released.

Integration tests run real ``nahual serve`` processes (the ``serve`` fixture);
the segment lifetime rules are also checked directly on the writer and reader.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pynng
import pytest
from conftest import Served, free_tcp_port, wait_until

import nahual
from nahual import _shm
from nahual._nng import ReplySocket
from nahual._protocol import ENVELOPE, MAGIC, VERSION, Kind, decode, encode, plan
from nahual._shm import HEADER, Segment, SegmentWriter
from nahual._shm_maps import SegmentCache
from nahual.errors import ProtocolError, RemoteError

pytestmark = pytest.mark.skipif(not _shm.shm_available(), reason="no writable /dev/shm")

MiB = 1 << 20
SHM = Path(_shm.SHM_DIR)


def segments_of(pid: int) -> list[Path]:
    """The segment files a process created."""
    return sorted(SHM.glob(f"nahual-{pid}-*"))


@pytest.fixture
def echo(echo_server: Served) -> Iterator[nahual.ModelHandle]:
    """An echo instance on a real server; the client's segments must be gone after it closes."""
    with nahual.Client(echo_server.address, timeout=30) as client:
        yield client.load("echo")
    assert segments_of(os.getpid()) == []


def large(value: float, dtype: str = "<f4", n: int = MiB) -> np.ndarray:
    """An array of ``n`` items (at least the out-of-band threshold) that encodes ``value`` everywhere."""
    return np.full(n, value, dtype=dtype)


def test_large_arrays_round_trip_through_shared_memory(echo: nahual.ModelHandle, echo_server: Served) -> None:
    rng = np.random.default_rng(7)
    base = rng.random((1024, 1024))
    payload = {
        "f32": base.astype(np.float32),
        "be_u2": (base * 60000).astype(">u2"),
        "c64": (base + 1j * base).astype(np.complex64)[:, :512],
        "strided": base[::2, ::3],  # non-contiguous: gathered by the one copy
        "transposed": base.T,
        "small": np.arange(10, dtype=np.int8),  # stays in the nng message
        "nested": [{"big": base.astype(np.int64)}, "text", 3],
    }
    result = echo(payload)
    for key in ("f32", "be_u2", "c64", "strided", "transposed", "small"):
        assert result[key].dtype.str == payload[key].dtype.str
        np.testing.assert_array_equal(result[key], payload[key])
    np.testing.assert_array_equal(result["nested"][0]["big"], payload["nested"][0]["big"])
    assert result["nested"][1:] == ["text", 3]
    assert not result["f32"].flags.writeable
    assert segments_of(os.getpid()) and segments_of(echo_server.process.pid)  # the fast path was taken


def test_sequential_and_pipelined_requests_get_their_own_results(echo: nahual.ModelHandle) -> None:
    for i in range(12):
        np.testing.assert_array_equal(echo({"a": large(i)})["a"], large(i))
    # Several in flight at once, with a delay so that server workers overlap: a segment
    # reused before its reader released it would hand one request another's values.
    payloads = ({"a": large(100 + i), "b": large(-i, "<f8", MiB // 2)} for i in range(24))
    for i, result in enumerate(echo.map(payloads, inflight=4, delay_s=0.005)):
        np.testing.assert_array_equal(result["a"], large(100 + i))
        np.testing.assert_array_equal(result["b"], large(-i, "<f8", MiB // 2))


def test_kept_reply_arrays_keep_their_values(echo: nahual.ModelHandle) -> None:
    kept = [echo({"a": large(i)})["a"] for i in range(4)]
    for i in range(4, 16):  # the server may not reuse the kept ones' segments for these
        echo({"a": large(i)})
    for i, array in enumerate(kept):
        np.testing.assert_array_equal(array, large(i))


def states(paths: list[Path]) -> list[int]:
    """The state word of each segment file (0 free, 1 busy)."""
    return [int.from_bytes(path.read_bytes()[4:8], "little") for path in paths]


def test_a_timed_out_request_keeps_its_segment_until_the_server_is_done(echo_server: Served) -> None:
    """The server still reads the first request's segment while the client sends the next ones."""
    with nahual.Client(echo_server.address, timeout=30) as client:
        echo, other = client.load("echo"), client.load("echo", replica=1)  # the slow one holds the first
        slow = {"data": large(1), "params": {"delay_s": 2.0}}
        with pytest.raises(nahual.TimeoutError):
            client.request("process", slow, timeout=0.05, instance=echo.instance_id)
        np.testing.assert_array_equal(other(large(2)), large(2))
        mine = segments_of(os.getpid())
        assert len(mine) == 2 and sorted(states(mine)) == [0, 1]  # the busy one was not reused
        wait_until(lambda: states(mine) == [0, 0], what="the server to release the slow request's segment")
        for i in range(3, 6):
            np.testing.assert_array_equal(echo(large(i)), large(i))
        assert segments_of(os.getpid()) == mine  # released segments are reused


def test_server_killed_with_sigkill_leaves_segments_the_next_socket_sweeps(
    serve: Callable[..., Served], ipc_address: Callable[[str], str]
) -> None:
    served = serve()
    with nahual.Client(served.address, timeout=30) as client:
        client.load("echo")(large(5))
    served.check_clean = False
    served.process.send_signal(signal.SIGKILL)
    served.process.wait(timeout=30)
    left = segments_of(served.process.pid)
    assert left, "the killed server's reply segment should still be there"
    ReplySocket(ipc_address("sweeper")).close()
    assert not any(path.exists() for path in left)


def test_no_segment_files_remain_after_client_and_server_close(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=30) as client:
        client.load("echo")({"a": large(1), "b": large(2, "<f8")})
        assert segments_of(os.getpid())
    assert segments_of(os.getpid()) == []
    assert echo_server.stop() == 0
    assert segments_of(echo_server.process.pid) == []


def test_oversized_messages_use_one_shot_segments(echo_server: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above MAX_REUSED a segment is unlinked by its receiver, so none stays pinned after the message."""
    monkeypatch.setattr(_shm, "MAX_REUSED", MiB)  # in this (client) process only
    with nahual.Client(echo_server.address, timeout=30) as client:
        echo = client.load("echo")
        before = segments_of(os.getpid())
        for i in range(3):
            np.testing.assert_array_equal(echo({"a": large(i, n=2 * MiB)})["a"], large(i, n=2 * MiB))
        assert segments_of(os.getpid()) == before  # each one-shot segment went with the server's read


def test_no_shared_memory_falls_back_to_nng(
    monkeypatch: pytest.MonkeyPatch, ipc_address: Callable[[str], str], tmp_path: Path
) -> None:
    monkeypatch.setattr(_shm, "SHM_DIR", str(tmp_path / "missing"))
    with nahual.Server(ipc_address("fb")) as server, nahual.Client(server.address, timeout=30) as client:
        echo = client.load("echo")
        np.testing.assert_array_equal(echo(large(4)), large(4))
    assert segments_of(os.getpid()) == []


def test_client_without_shared_memory_gets_plain_replies(echo_server: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAHUAL_SHM", "0")
    with nahual.Client(echo_server.address, timeout=30) as client:
        echo = client.load("echo")
        for i in range(3):
            np.testing.assert_array_equal(echo(large(i)), large(i))
        assert segments_of(os.getpid()) == []
    assert segments_of(echo_server.process.pid) == []  # the server never answered through a segment


def test_server_without_shared_memory_is_sent_plain_requests(serve: Callable[..., Served]) -> None:
    served = serve(env={"NAHUAL_SHM": "0"})
    with nahual.Client(served.address, timeout=30) as client:
        echo = client.load("echo")  # offers a segment; the server cannot take it
        for i in range(3):
            np.testing.assert_array_equal(echo(large(i)), large(i))
    assert segments_of(served.process.pid) == []


def test_unusable_directory_makes_the_writer_decline(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"  # (permissions would not stop root)
    not_a_directory.write_bytes(b"")
    writer = SegmentWriter(directory=str(not_a_directory))
    assert writer.place([MiB]) is None
    message = plan(Kind.REQUEST, 1, {}, {"a": large(1)}, writer)
    assert message.segment is None and message.nbytes > MiB  # in the message instead
    buffer = bytearray(message.nbytes)
    message.write_into(buffer)
    np.testing.assert_array_equal(decode(buffer).payload["a"], large(1))


# -- lifetime rules on the writer and reader --------------------------------------------------


@pytest.fixture
def writer() -> Iterator[SegmentWriter]:
    made = SegmentWriter()
    yield made
    made.close()
    assert segments_of(os.getpid()) == []


def test_busy_segments_are_never_handed_out_again_until_released(writer: SegmentWriter) -> None:
    first = writer.place([MiB])
    second = writer.place([MiB])
    assert first is not None and second is not None and first.name != second.name
    cache = SegmentCache(lasting_views=False)
    reader = cache.reader()
    reader.view(first.name, first.offsets[0], MiB)
    reader.release()
    again = writer.place([2 * MiB])  # the released one, grown
    assert again is not None and again.name == first.name and len(again.buffer) >= HEADER + 2 * MiB
    cache.close()


def test_a_full_pool_places_messages_in_one_shot_segments(writer: SegmentWriter) -> None:
    names = {writer.place([MiB]).name for _ in range(_shm.POOL)}
    assert len(names) == _shm.POOL
    extra = writer.place([MiB])
    assert extra is not None and extra.name not in names
    assert _shm.STATE.unpack_from(extra.buffer, _shm.STATE_OFFSET)[0] == _shm.ONESHOT


def test_reader_sees_a_grown_segment(writer: SegmentWriter) -> None:
    cache = SegmentCache(lasting_views=False)
    reader = cache.reader()
    small = writer.place([1024])
    np.frombuffer(small.buffer, np.uint8, 1024, small.offsets[0])[:] = 7
    assert bytes(reader.view(small.name, HEADER, 1024)) == b"\x07" * 1024
    reader.release()
    big = writer.place([4 * MiB])
    assert big.name == small.name
    np.frombuffer(big.buffer, np.uint8, 4 * MiB, big.offsets[0])[-1] = 9
    assert reader.view(big.name, HEADER, 4 * MiB)[-1] == 9
    reader.release()
    cache.close()


def mapped_deleted(name: str) -> bool:
    """Whether this process still maps segment ``name`` after its file was unlinked."""
    return any(name in line and line.endswith("(deleted)") for line in Path("/proc/self/maps").read_text().splitlines())


def test_maps_of_a_gone_peer_or_unused_for_long_are_dropped(writer: SegmentWriter) -> None:
    cache = SegmentCache(lasting_views=False)
    reader = cache.reader()
    names = []
    for _ in range(2):
        placed = writer.place([MiB])
        reader.view(placed.name, HEADER, MiB)
        names.append(placed.name)
    del placed  # the writer's own map of it
    reader.release()
    writer.close()  # the peer unlinks its segments: our maps still pin them
    assert all(mapped_deleted(name) for name in names)
    assert cache.drop_peer(os.getpid() + 1) == 0  # another process's: nothing to drop
    assert cache.drop_idle(60.0) == 0  # used just now
    assert cache.drop_peer(os.getpid()) == 2
    assert not any(mapped_deleted(name) for name in names)
    again = SegmentWriter()
    try:
        placed = again.place([MiB])
        reader.view(placed.name, HEADER, MiB)
        reader.release()
        assert cache.drop_idle(0.0) == 1  # the idle timer's rule, with no wait
    finally:
        again.close()
        cache.close()


def test_one_shot_segment_is_unlinked_by_its_reader_and_serves_every_array(
    writer: SegmentWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_shm, "MAX_REUSED", MiB)
    payload = {"a": large(1, n=MiB // 2), "b": large(2, "<f8", MiB // 4)}  # 4 MiB together
    message = plan(Kind.REPLY, 3, {}, payload, writer)
    buffer = bytearray(message.nbytes)
    message.write_into(buffer)
    assert len(segments_of(os.getpid())) == 1
    cache = SegmentCache(lasting_views=True)
    reader = cache.reader()
    received = decode(buffer, reader).payload
    reader.release()
    assert segments_of(os.getpid()) == []
    np.testing.assert_array_equal(received["a"], payload["a"])
    np.testing.assert_array_equal(received["b"], payload["b"])
    cache.close()


def crafted(spec: dict) -> bytes:
    """A request whose one array spec is ``spec``."""
    header = json.dumps({"meta": {"op": "ping"}, "payload": {"$nahual": "array", "index": 0}, "arrays": [spec]})
    text = header.encode()
    return ENVELOPE.pack(MAGIC, VERSION, Kind.REQUEST, 0, 77, len(text), 0) + text


def hostile_specs(good: str, size: int) -> list[dict]:
    """Specs that name bad segments or lie about offsets."""
    spec = {"dtype": "|u1", "shape": [16], "nbytes": 16, "offset": HEADER}
    names = ["../../etc/passwd", "nahual-1-../../../x", "NAHUAL-1-0123456789abcdef", "nahual-1-0123456789abcde",
             f"{good}/x", "nahual-99999999-0123456789abcdef", 7, None, ["x"], {"a": 1}]  # fmt: skip
    specs = [dict(spec, segment=name) for name in names]
    specs += [dict(spec, segment=good, offset=offset) for offset in (0, 8, HEADER + 1, size, 2**62)]
    specs.append(dict(spec, segment=good, shape=[size], nbytes=size))  # runs past the end
    return specs


def test_hostile_segment_names_and_offsets_raise_protocol_error(writer: SegmentWriter) -> None:
    placed = writer.place([MiB])
    cache = SegmentCache(lasting_views=False)
    reader = cache.reader()
    for spec in hostile_specs(placed.name, len(placed.buffer)):
        with pytest.raises(ProtocolError):
            decode(crafted(spec), reader)
    cache.close()


def test_a_file_that_is_not_a_segment_is_refused(tmp_path: Path) -> None:
    name = f"nahual-{os.getppid()}-{'0' * 16}"
    path = SHM / name
    path.write_bytes(b"junk" * 100)
    try:
        cache = SegmentCache(lasting_views=False)
        with pytest.raises(ProtocolError, match="not a nahual shared-memory segment"):
            decode(crafted({"dtype": "|u1", "shape": [4], "nbytes": 4, "offset": HEADER, "segment": name}),
                   cache.reader())  # fmt: skip
        cache.close()
    finally:
        path.unlink()


def test_segment_references_are_refused_without_a_resolver(writer: SegmentWriter) -> None:
    message = encode(Kind.REQUEST, 1, {}, {"a": large(1)})  # in band: fine
    assert decode(message).payload["a"].shape == (MiB,)
    placed = plan(Kind.REQUEST, 1, {}, {"a": large(1)}, writer)
    assert placed.segment is not None
    buffer = bytearray(placed.nbytes)
    placed.write_into(buffer)
    with pytest.raises(ProtocolError, match="only accepted over ipc"):
        decode(buffer)


def ask(address: str, message: bytes) -> dict:
    """Send raw bytes to a server; returns the meta of its (error) reply."""
    with pynng.Req0(dial=address, recv_timeout=10_000, send_timeout=10_000, resend_time=-1) as sock:
        sock.send(message)
        frame = decode(sock.recv())
    assert frame.kind == Kind.ERROR
    return frame.meta


def test_live_servers_refuse_hostile_segments_over_ipc_and_any_segment_over_tcp(
    serve: Callable[..., Served],
) -> None:
    segment = Segment(2 * HEADER, _shm.BUSY)
    try:
        ipc = serve()
        for spec in hostile_specs(segment.name, segment.size):
            assert ask(ipc.address, crafted(spec))["type"] == "ProtocolError", spec
        tcp = serve(address=f"tcp://127.0.0.1:{free_tcp_port()}", env={"NAHUAL_TOKEN": "s3cret"})  # decoded first
        valid = {"dtype": "|u1", "shape": [4], "nbytes": 4, "offset": HEADER, "segment": segment.name}
        assert "only accepted over ipc" in ask(tcp.address, crafted(valid))["message"]
    finally:
        segment.close()


def test_remote_errors_still_arrive_with_large_payloads(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=30) as client:
        with pytest.raises(RemoteError, match="no instance"):
            client.request("process", {"data": large(1), "params": {}}, instance="missing")
        wait_until(lambda: client.ping() > 0, what="the server to keep answering")
