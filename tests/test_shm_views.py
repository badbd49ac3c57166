"""Reply arrays as views on shared memory, reply buffers a model fills, and clean-up after SIGKILL.

A client's reply arrays are read-only views on the server's segment, which
the server may not reuse while one exists (``copy=True`` returns private
copies); a model's ``nahual.reply_array`` is sent where it was written. The
tests run real ``nahual serve`` processes, except the unit tests of the
writer's rules at the end.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Served, subprocess_env, wait_until
from reply_models import mapped_file

import nahual
from nahual import _shm
from nahual._protocol import Kind, decode, plan
from nahual._shm import SegmentWriter
from nahual._shm_maps import SegmentCache
from nahual._shm_replies import ReplyBuffers
from nahual.errors import PayloadError

pytestmark = pytest.mark.skipif(not _shm.shm_available(), reason="no writable /dev/shm")

MiB = 1 << 20
SHM = Path(_shm.SHM_DIR)


def segments_of(pid: int) -> list[Path]:
    """The segment files a process created."""
    return sorted(SHM.glob(f"nahual-{pid}-*"))


def state(name: str) -> int:
    """The state word of segment ``name`` (0 free, 1 busy)."""
    return int.from_bytes((SHM / name).read_bytes()[4:8], "little")


def large(value: float, n: int = MiB) -> np.ndarray:
    return np.full(n, value, np.float32)


@pytest.fixture
def client(echo_server: Served) -> Iterator[nahual.Client]:
    with nahual.Client(echo_server.address, timeout=30) as made:
        yield made
    assert segments_of(os.getpid()) == []


# -- views ---------------------------------------------------------------------------------------


def test_a_held_reply_view_is_never_overwritten_and_frees_its_segment_when_released(
    client: nahual.Client, echo_server: Served
) -> None:
    echo = client.load("echo")
    first = echo({"a": large(1)})["a"]
    name = mapped_file(first)
    assert name.startswith(f"nahual-{echo_server.process.pid}-")  # a view on the server's segment
    assert not first.flags.writeable
    for i in range(2, 3 * _shm.POOL):  # more replies than the server's pool holds
        np.testing.assert_array_equal(echo({"a": large(i)})["a"], large(i))
    for i, result in enumerate(echo.map(({"a": large(-i)} for i in range(12)), inflight=4, delay_s=0.002)):
        np.testing.assert_array_equal(result["a"], large(-i))
    np.testing.assert_array_equal(first, large(1))
    assert state(name) == _shm.BUSY
    part = first[10:20]  # any view keeps the segment busy
    del first
    assert state(name) == _shm.BUSY
    del part
    assert state(name) == _shm.FREE


def test_copy_true_returns_private_writable_arrays_and_frees_the_segment_at_once(client: nahual.Client) -> None:
    echo = client.load("echo")
    view = echo({"a": large(3)})["a"]
    name = mapped_file(view)
    del view
    assert state(name) == _shm.FREE
    copied = echo({"a": large(4), "n": [large(5)]}, copy=True)
    assert state(name) == _shm.FREE  # the reply went out of the same segment and is already free
    for array, value in ((copied["a"], 4), (copied["n"][0], 5)):
        assert array.flags.writeable and array.flags.owndata and mapped_file(array) == ""
        np.testing.assert_array_equal(array, large(value))
    futures = [echo.submit(large(6), copy=True), client.submit("ping", copy=True)]
    assert futures[0].result().flags.writeable and futures[1].result()["pong"] is True
    assert all(result.flags.writeable for result in echo.map([large(7)] * 3, copy=True))


# -- reply buffers -------------------------------------------------------------------------------


def test_a_model_writes_its_result_straight_into_the_reply_segment(client: nahual.Client, echo_server: Served) -> None:
    filled = client.load("reply_models:Filled")
    for view, expected in (("whole", large(2)), ("head", large(2, MiB // 2))):
        result = filled(None, value=2.0, view=view)
        assert result["file"].startswith(f"nahual-{echo_server.process.pid}-")  # the model's array lives there
        assert mapped_file(result["out"]) == result["file"]  # and the client reads those very bytes
        np.testing.assert_array_equal(result["out"], expected)
    for view, expected in (("shifted", large(3, MiB - 1)), ("strided", large(3, MiB // 2))):
        result = filled(None, value=3.0, view=view)  # not aligned, or not contiguous: copied as usual
        assert mapped_file(result["out"]) != result["file"]
        np.testing.assert_array_equal(result["out"], expected)
    small = filled(None, n=16, value=1.0)
    assert small["file"] == "" and small["writeable"]  # below the threshold: a plain array
    np.testing.assert_array_equal(small["out"], large(1, 16))


def test_a_reply_buffer_the_server_keeps_is_not_reused_for_other_replies(client: nahual.Client) -> None:
    filled = client.load("reply_models:Filled")
    kept = filled(None, value=1.0, keep=True)
    name = kept["file"]
    del kept
    assert state(name) == _shm.FREE  # the client let go of it; the model did not
    for i in range(2, 3 * _shm.POOL):
        result = filled(None, value=float(i))
        assert result["file"] != name
        np.testing.assert_array_equal(result["out"], large(i))


def test_reply_array_is_a_plain_array_for_clients_without_shared_memory(
    echo_server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAHUAL_SHM", "0")
    with nahual.Client(echo_server.address, timeout=30) as plain:
        result = plain.load("reply_models:Filled")(None, value=5.0)
    assert result["file"] == "" and result["writeable"]
    np.testing.assert_array_equal(result["out"], large(5))


def test_reply_array_outside_a_server_is_an_empty_array_and_refuses_what_cannot_be_sent() -> None:
    array = nahual.reply_array((3, 4), "<u2")
    assert array.shape == (3, 4) and array.dtype == np.dtype("<u2") and array.flags.writeable
    assert nahual.reply_array(5).shape == (5,)
    for shape, dtype in (((3, -1), "f4"), ((2.5,), "f4"), ((2,), object), ((2,), [("a", "i4")]), ((2,), "nope")):
        with pytest.raises(PayloadError, match="reply_array"):
            nahual.reply_array(shape, dtype)


# -- SIGKILL of either side ----------------------------------------------------------------------

HOLDER = """
import json, sys, time
import numpy as np
import nahual
from reply_models import mapped_file
client = nahual.Client(sys.argv[1], timeout=30)
echo = client.load("echo")
held = [echo({"a": np.full(1 << 20, i, np.float32)})["a"] for i in range(3)]
print(json.dumps({"held": [mapped_file(a) for a in held]}), flush=True)
time.sleep(600)
"""


def test_a_client_killed_holding_views_leaves_nothing_behind(echo_server: Served) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, echo_server.address], stdout=subprocess.PIPE, env=subprocess_env()
    )
    try:
        held = json.loads(holder.stdout.readline())["held"]
        assert len(set(held)) == 3 and all(state(name) == _shm.BUSY for name in held)
        own = segments_of(holder.pid)
        assert own  # its request segments
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    wait_until(lambda: all(state(name) == _shm.FREE for name in held), what="the server to reclaim its segments")
    assert all(path.exists() for path in own)
    assert set(_shm.sweep()) >= {path.name for path in own}
    assert segments_of(holder.pid) == []
    before = segments_of(echo_server.process.pid)
    with nahual.Client(echo_server.address, timeout=30) as client:
        echo = client.load("echo")
        for i in range(3):
            np.testing.assert_array_equal(echo(large(i)), large(i))
    assert segments_of(echo_server.process.pid) == before  # the reclaimed segments served these


def deleted_maps() -> list[str]:
    """The unlinked nahual segments this process still maps."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return [line for line in lines if "/nahual-" in line and line.endswith("(deleted)")]


def test_views_outlive_a_server_killed_with_sigkill_and_its_segments_are_swept(serve: Callable[..., Served]) -> None:
    served = serve()
    with nahual.Client(served.address, timeout=30) as client:
        echo = client.load("echo")
        held = [echo(large(i)) for i in range(2)]
        served.check_clean = False
        served.process.send_signal(signal.SIGKILL)
        served.process.wait(timeout=30)
        left = segments_of(served.process.pid)
        assert {mapped_file(a) for a in held} <= {path.name for path in left}
        assert set(_shm.sweep()) >= {path.name for path in left}
        assert segments_of(served.process.pid) == []
        for i, array in enumerate(held):
            np.testing.assert_array_equal(array, large(i))  # the pages live on with the views
        del array
    assert segments_of(os.getpid()) == []
    assert deleted_maps()
    del held
    gc.collect()
    assert deleted_maps() == []  # the memory went with the last view


# -- the writer's rules, in one process ----------------------------------------------------------


@pytest.fixture
def writer() -> Iterator[SegmentWriter]:
    made = SegmentWriter()
    yield made
    made.close()
    assert segments_of(os.getpid()) == []


def test_a_reply_buffer_is_sent_without_a_copy_and_reused_only_when_both_sides_let_go(writer: SegmentWriter) -> None:
    buffers = ReplyBuffers(writer)
    out = buffers.array((MiB,), np.dtype(np.float32))
    out[:] = 7
    message = plan(Kind.REPLY, 1, {}, {"out": out[: MiB // 2]}, buffers)
    assert message.placed == [True] and message.segment is None and message.nbytes < 1024
    name = message.segment_names[0]
    buffer = bytearray(message.nbytes)
    message.write_into(buffer)
    cache = SegmentCache(lasting_views=True)
    reader = cache.reader()
    received = decode(buffer, reader).payload["out"]
    reader.release()
    buffers.sent(message, pipe=0)
    np.testing.assert_array_equal(received, large(7, MiB // 2))
    del received
    assert state(name) == _shm.FREE  # the client let go ...
    assert writer.place([MiB]).name != name  # ... but `out` still views it here
    del message, out
    assert writer.place([MiB]).name == name
    cache.close()


def test_a_reply_buffer_that_was_not_sent_goes_back_when_dropped(
    writer: SegmentWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffers = ReplyBuffers(writer)
    pooled = buffers.array((MiB,), np.dtype(np.uint8))
    name = mapped_file(pooled)
    del pooled
    assert writer.place([MiB]).name == name
    monkeypatch.setattr(_shm, "MAX_REUSED", MiB)
    oneshot = buffers.array((2 * MiB,), np.dtype(np.uint8))
    path = SHM / mapped_file(oneshot)
    assert path.exists()
    del oneshot
    assert not path.exists()


def test_held_segments_are_never_abandoned_while_the_model_fills_them(
    writer: SegmentWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffers = ReplyBuffers(writer)
    pooled = buffers.array((MiB,), np.dtype(np.uint8))
    monkeypatch.setattr(_shm, "MAX_REUSED", MiB)
    oneshot = buffers.array((2 * MiB,), np.dtype(np.uint8))
    held = [SHM / mapped_file(pooled), SHM / mapped_file(oneshot)]
    monkeypatch.setattr(_shm, "STALE_S", 0.0)  # a model slower than any limit
    other = writer.place([2 * MiB])  # placing reaps what is stale
    assert all(path.exists() for path in held)
    del pooled, oneshot  # not sent: the pooled one is free again, the one-shot one gone
    assert state(held[0].name) == _shm.FREE and not held[1].exists()
    assert other is not None


def test_segments_lent_to_a_dead_or_zombie_process_are_reclaimed() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lent = SegmentWriter(peer_pid=lambda pipe: child.pid)
    try:
        placed = lent.place([MiB])
        lent.lend([placed.name], pipe=1)
        assert lent.reclaim() == [] and state(placed.name) == _shm.BUSY
        child.send_signal(signal.SIGKILL)
        wait_until(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
        assert lent.reclaim() == [placed.name]  # a zombie holds no views
        assert state(placed.name) == _shm.FREE
    finally:
        child.kill()
        child.wait()
        lent.close()
