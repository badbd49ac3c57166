"""The pipelined run: chunks decoded once, one lane per block, a bounded window, GPUs per instance."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from stream_models import Blobs  # noqa: E402
from test_stream_resume import labels_of  # noqa: E402
from test_stream_stitch import blobs  # noqa: E402

import nahual.launcher  # noqa: E402
from nahual.errors import BlockError, TimeoutError, TransportError  # noqa: E402
from nahual.launcher import spread_devices  # noqa: E402
from nahual.stream import LocalModel, StreamOptions, apply, make_plan, write_image  # noqa: E402
from nahual.stream import _cache as cache_module  # noqa: E402
from nahual.stream._connect import connect_workers  # noqa: E402
from nahual.stream._labels import LabelSink  # noqa: E402
from nahual.stream._payload import BlockReader, ChunkCache  # noqa: E402
from nahual.stream._resume import RunState  # noqa: E402
from nahual.stream._runner import lane_count  # noqa: E402

TILE = StreamOptions(tile="y=32,x=32", halo=8, inflight=2)


@pytest.fixture
def pixels():
    return blobs((2, 128, 128), 64, seed=3)


@pytest.fixture
def image(tmp_path, pixels):
    return write_image(tmp_path / "img.zarr", pixels, "tyx", chunks=(1, 64, 64))


@pytest.fixture
def reference(image):
    with LocalModel(Blobs) as model:
        apply(model, image, "reference", TILE, progress=False)
    return labels_of(image, "reference")


def count_chunk_reads(monkeypatch) -> list[int]:
    """Make every read of the input record how many chunks its box spans (64x64 chunks of a tyx array)."""
    spans: list[int] = []
    direct = cache_module.read

    def counted(array, box, *args):
        spans.append(int(np.prod([-(-(s.stop) // c) - s.start // c for s, c in zip(box, array.chunks, strict=True)])))
        return direct(array, box, *args)

    monkeypatch.setattr(cache_module, "read", counted)
    return spans


def test_blocks_read_through_the_cache_match_direct_reads_and_decode_each_chunk_once(image, pixels, monkeypatch):
    array = zarr.open_array(f"{image}/0", mode="r")
    plan = make_plan(
        Blobs.contract, "labels", "tyx", array.shape, array.chunks, StreamOptions(tile="y=40,x=40", halo=8)
    )
    blocks = plan.blocks()
    spans = count_chunk_reads(monkeypatch)
    reader = BlockReader(Blobs.contract, plan, blocks, array, None, ahead=2)
    for block in blocks:
        (t, y0, x0), (_, y1, x1) = block.read_start, block.read_stop
        got = reader(block)["image"]
        assert got.dtype == np.float32 and np.array_equal(got, pixels[t, y0:y1, x0:x1]), plan.describe(block)
    assert len(blocks) == 32 and sum(spans) == 2 * 2 * 2  # each of the 8 chunks once, not once per block


def test_tiles_a_quarter_of_a_chunk_decode_each_chunk_once(tmp_path, monkeypatch):
    """16 tiles share a chunk, the first and the last 15 blocks apart: the cache keeps it for all of them."""
    pixels = np.random.default_rng(3).integers(0, 2**16, (3, 128, 128), dtype=np.uint16)
    array = zarr.open_array(f"{write_image(tmp_path / 'q.zarr', pixels, 'tyx', chunks=(1, 128, 128))}/0", mode="r")
    plan = make_plan(Blobs.contract, "labels", "tyx", array.shape, array.chunks, StreamOptions(tile="y=32,x=32"))
    spans = count_chunk_reads(monkeypatch)
    reader = BlockReader(Blobs.contract, plan, plan.blocks(), array, None, ahead=2)
    for block in plan.blocks():
        (t, y0, x0), (_, y1, x1) = block.read_start, block.read_stop
        assert np.array_equal(reader(block)["image"], pixels[t, y0:y1, x0:x1].astype(np.float32))
    assert len(plan.blocks()) == 48 and spans == [1, 1, 1]


def test_reader_threads_share_the_cache_and_get_the_right_pixels(image, pixels):
    array = zarr.open_array(f"{image}/0", mode="r")
    plan = make_plan(
        Blobs.contract, "labels", "tyx", array.shape, array.chunks, StreamOptions(tile="y=24,x=24", halo=5)
    )
    blocks = plan.blocks()
    reader = BlockReader(Blobs.contract, plan, blocks, array, None, ahead=4)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(reader, blocks))
    for block, result in zip(blocks, results, strict=True):
        (t, y0, x0), (_, y1, x1) = block.read_start, block.read_stop
        assert np.array_equal(result["image"], pixels[t, y0:y1, x0:x1]), plan.describe(block)


def test_a_read_with_no_place_in_the_order_decodes_directly_and_keeps_nothing(image, pixels, monkeypatch):
    spans = count_chunk_reads(monkeypatch)
    array = zarr.open_array(f"{image}/0", mode="r")
    box = (slice(1, 2), slice(10, 100), slice(30, 128))
    cache = ChunkCache(array, [box], near=2, lookahead=2)
    assert np.array_equal(cache.read(box), pixels[box]) and np.array_equal(cache.read(box), pixels[box])
    assert spans == [4, 4] and cache.kept_bytes() == 0


def wide_run(tmp_path, width: int, monkeypatch) -> tuple[int, int, int]:
    """Read every block of a 4-chunk-high image ``width`` chunks wide (tiles = chunks of 32, halo 4) through a
    cache whose budget holds 6 whole chunks: (chunk decodes, chunks, most bytes kept at once)."""
    pixels = np.random.default_rng(width).integers(0, 2**16, (1, 128, 32 * width), dtype=np.uint16)
    store = write_image(tmp_path / f"wide{width}.zarr", pixels, "tyx", chunks=(1, 32, 32))
    array = zarr.open_array(f"{store}/0", mode="r")
    options = StreamOptions(tile="y=32,x=32", halo=4)
    plan = make_plan(Blobs.contract, "labels", "tyx", array.shape, array.chunks, options)
    monkeypatch.setattr(cache_module, "CACHE_BYTES", 6 * 32 * 32 * 2)
    spans = count_chunk_reads(monkeypatch)
    reader = BlockReader(Blobs.contract, plan, plan.blocks(), array, None, ahead=1)
    most = 0
    for block in plan.blocks():
        (t, y0, x0), (_, y1, x1) = block.read_start, block.read_stop
        assert np.array_equal(reader(block)["image"], pixels[t, y0:y1, x0:x1].astype(np.float32))
        most = max(most, reader.image.kept_bytes())
    return sum(spans), 4 * width, most


def test_a_wide_image_keeps_halo_strips_not_rows_of_chunks_and_decodes_each_chunk_at_most_twice(tmp_path, monkeypatch):
    decoded, chunks, narrow = wide_run(tmp_path, 8, monkeypatch)
    assert chunks < decoded <= 2 * chunks  # a chunk is read again for its own row after the row above took its strip
    decoded, chunks, wide = wide_run(tmp_path, 16, monkeypatch)
    assert chunks < decoded <= 2 * chunks
    strips = 2 * 4 * 32 * 8 * 2  # two rows of halo strips (4 pixels high) across the 8 chunks more, uint16
    assert wide - narrow <= strips, (narrow, wide)  # rows of whole chunks would add 2 x 8 x 2 KiB = 32 KiB


def test_a_block_stays_on_its_lane_and_a_slow_writer_holds_back_the_reads(image, reference, monkeypatch):
    """Each block is read and written on one lane; a slow writer fills the window, which never holds more
    than one block per lane."""
    events = {"read": 0, "written": 0, "most": 0}
    lock = threading.Lock()
    readers: dict[int, str] = {}
    writers: dict[int, str] = {}
    read, write = BlockReader.__call__, LabelSink.write

    def reading(self, block):
        with lock:
            readers[block.index] = threading.current_thread().name
            events["read"] += 1
            events["most"] = max(events["most"], events["read"] - events["written"])
        return read(self, block)

    def writing(self, block, result):
        writers[block.index] = threading.current_thread().name
        time.sleep(0.02)
        write(self, block, result)
        with lock:
            events["written"] += 1

    monkeypatch.setattr(BlockReader, "__call__", reading)
    monkeypatch.setattr(LabelSink, "write", writing)
    with LocalModel(Blobs) as model:
        apply(model, image, "seg", TILE, progress=False)
    assert np.array_equal(labels_of(image, "seg"), reference)
    assert readers == writers and len(readers) == 2 * 4 * 4
    assert all(name.startswith("nahual-lane") for name in readers.values()), readers
    assert len(set(readers.values())) == lane_count(TILE.inflight) == TILE.inflight + 2
    assert TILE.inflight < events["most"] <= lane_count(TILE.inflight), events


def test_requests_in_flight_never_exceed_inflight(image, monkeypatch):
    """However many lanes read and write, at most ``inflight`` of them wait on the model at once."""
    calls = {"now": 0, "most": 0}
    lock = threading.Lock()
    call = LocalModel.__call__

    def counted(self, payload, **kwargs):
        with lock:
            calls["now"] += 1
            calls["most"] = max(calls["most"], calls["now"])
        try:
            return call(self, payload, **kwargs)
        finally:
            with lock:
                calls["now"] -= 1

    monkeypatch.setattr(LocalModel, "__call__", counted)
    with LocalModel(Blobs, {"delay_s": 0.01}) as model:
        apply(model, image, "seg", TILE.replace(inflight=3), progress=False, finalize=False)
    assert calls["most"] == 3, calls


def test_ctrl_c_writes_the_blocks_in_flight_and_the_rerun_resumes(image, reference, monkeypatch):
    """SIGINT during a run: no new block starts, each block already started is written whole, no lane is left."""
    write = LabelSink.write
    started: list[int] = []

    def interrupted(self, block, result):
        started.append(block.index)
        if len(started) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread, waiting for the lanes
        time.sleep(0.05)
        write(self, block, result)

    monkeypatch.setattr(LabelSink, "write", interrupted)
    with LocalModel(Blobs) as model:
        with pytest.raises(KeyboardInterrupt):
            apply(model, image, "seg", TILE, progress=False)
        # alive: a lane that has just ended can still be listed for a moment
        assert not [t for t in threading.enumerate() if t.name.startswith("nahual-lane") and t.is_alive()]
        finished = RunState(str(image), "seg").finished()
        assert finished == set(started) and 3 <= len(finished) < 2 * 4 * 4, (finished, started)
        monkeypatch.setattr(LabelSink, "write", write)
        again = apply(model, image, "seg", TILE, progress=False)
    assert again["skipped"] == len(finished) and np.array_equal(labels_of(image, "seg"), reference)


def test_ctrl_c_waits_for_the_block_the_first_lane_is_writing(image, monkeypatch):
    """The first lane is still writing when Ctrl-C comes: the run waits for it before it raises.

    (A ``Thread.join`` that Ctrl-C interrupts marks its thread ended while it runs, in CPython
    before 3.13: a run that joined its lanes raised with that lane's block half-recorded.)
    """
    write = LabelSink.write
    started: list[int] = []
    first_writing, sent = threading.Event(), threading.Event()

    def interrupted(self, block, result):
        started.append(block.index)
        if threading.current_thread().name == "nahual-lane_0":
            first_writing.set()
            time.sleep(0.5)  # the main thread waits on this lane when the signal comes
        elif first_writing.wait(5) and not sent.is_set():
            sent.set()
            time.sleep(0.1)  # the main thread has started every lane and waits for them
            os.kill(os.getpid(), signal.SIGINT)
        write(self, block, result)

    monkeypatch.setattr(LabelSink, "write", interrupted)
    with LocalModel(Blobs) as model:
        with pytest.raises(KeyboardInterrupt):
            apply(model, image, "seg", TILE, progress=False)
    assert sent.is_set() and RunState(str(image), "seg").finished() == set(started), started


def test_ctrl_c_while_the_lanes_start_is_taken_once_they_have(image, monkeypatch):
    """SIGINT inside ``Thread.start`` of the second lane: every lane starts and is waited for, the run stops.

    (A KeyboardInterrupt inside ``Thread.start`` can leave a lane running that the run never counted:
    it then waited for ever, or for a second Ctrl-C, which the watchdog here would send.)
    """
    start = threading.Thread.start
    lanes: list[threading.Thread] = []

    def interrupting(thread):
        if thread.name.startswith("nahual-lane"):
            lanes.append(thread)
            if len(lanes) == 2:
                os.kill(os.getpid(), signal.SIGINT)
        start(thread)

    fired = threading.Event()

    def second_ctrl_c():
        fired.set()
        os.kill(os.getpid(), signal.SIGINT)

    watchdog = threading.Timer(20, second_ctrl_c)
    monkeypatch.setattr(threading.Thread, "start", interrupting)
    watchdog.start()
    try:
        with LocalModel(Blobs) as model, pytest.raises(KeyboardInterrupt):
            apply(model, image, "seg", TILE, progress=False, finalize=False)
    finally:
        watchdog.cancel()
        watchdog.join()
    assert not fired.is_set()
    assert len(lanes) == lane_count(TILE.inflight) and not any(lane.is_alive() for lane in lanes)
    assert len(RunState(str(image), "seg").finished()) < 2 * 4 * 4


def requests_by_block(monkeypatch, before_read, answer) -> list[int]:
    """Patch the reads and the model calls of a run: returns the block index of each request, in order.

    ``before_read(index)`` runs before a block is read; ``answer(index, call)`` answers its request
    (``call()`` is the model's own answer). A block stays on one lane, so the lane tells a request's block.
    """
    requests: list[int] = []
    lane = threading.local()
    read, call = BlockReader.__call__, LocalModel.__call__

    def reading(self, block):
        lane.block = block.index
        before_read(block.index)
        return read(self, block)

    def requesting(self, payload, **kwargs):
        requests.append(lane.block)
        return answer(lane.block, lambda: call(self, payload, **kwargs))

    monkeypatch.setattr(BlockReader, "__call__", reading)
    monkeypatch.setattr(LocalModel, "__call__", requesting)
    return requests


def test_after_ctrl_c_a_block_read_but_not_sent_is_not_sent(image, monkeypatch):
    """A block waiting for a request slot when SIGINT comes stays unsent: its server got the same Ctrl-C and
    may be gone, and a request sent after the connection closed waits out its whole timeout."""
    handled = threading.Event()

    def interrupting(_index, call):
        if not handled.is_set():
            os.kill(os.getpid(), signal.SIGINT)
            assert handled.wait(30)
            time.sleep(0.1)  # the main thread, interrupted in its wait for the lanes, marks the run as stopping
        return call()

    def on_sigint(_signum, _frame):
        handled.set()
        raise KeyboardInterrupt

    requests = requests_by_block(monkeypatch, lambda _index: None, interrupting)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with LocalModel(Blobs) as model, pytest.raises(KeyboardInterrupt):
            apply(model, image, "seg", TILE.replace(inflight=1), progress=False, finalize=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(requests) == 1, requests  # the two other lanes had read their blocks and waited for the one slot
    assert RunState(str(image), "seg").finished() == set(requests)


def test_no_request_goes_to_a_worker_whose_connection_was_lost(image, monkeypatch):
    """A block read before a later block found its server gone is not sent there (it would wait out its
    timeout for a reconnection): it fails at once, with the lost connection as its cause."""
    lost = threading.Event()

    def held_back(index):
        if index == 0:
            assert lost.wait(30)  # block 0 asks for its slot only after block 1's connection dropped

    def dropping(index, call):
        if lost.is_set():
            raise TimeoutError("no reply within 600 s")  # what a request on a lost connection ends with
        if index == 1:
            lost.set()
            raise TransportError("Connection reset: the server closed the connection or died")
        return call()

    requests = requests_by_block(monkeypatch, held_back, dropping)
    with LocalModel(Blobs) as model, pytest.raises(BlockError) as caught:
        apply(model, image, "seg", TILE.replace(inflight=1), progress=False, finalize=False)
    assert requests[-1] == 1 and 0 not in requests, requests
    assert caught.value.block.startswith("block 0 ") and type(caught.value.__cause__) is TransportError
    assert "the server closed the connection or died" in str(caught.value)


def test_the_model_works_while_finished_blocks_are_written(image, monkeypatch):
    """A block's write overlaps the model's work on a later block (intervals from timestamps, no time limit)."""
    write, process = LabelSink.write, Blobs.process
    writes, calls = [], []

    def slow_write(self, block, result):
        start = time.monotonic()
        time.sleep(0.03)
        write(self, block, result)
        writes.append((start, time.monotonic()))

    def timed_process(self, payload, **params):
        start = time.monotonic()
        result = process(self, payload, **params)
        calls.append((start, time.monotonic()))
        return result

    monkeypatch.setattr(LabelSink, "write", slow_write)
    monkeypatch.setattr(Blobs, "process", timed_process)
    with LocalModel(Blobs, {"delay_s": 0.03}) as model:
        apply(model, image, "seg", TILE.replace(inflight=1), progress=False, finalize=False)
    assert len(writes) == len(calls) == 2 * 4 * 4
    overlapping = sum(any(ws < ce and cs < we for cs, ce in calls) for ws, we in writes)
    assert overlapping >= len(writes) // 2, f"{overlapping} of {len(writes)} writes overlapped a model call"


def test_a_failing_write_names_its_block_and_resume_finishes(image, reference, monkeypatch):
    write = LabelSink.write

    def failing(self, block, result):
        if block.index == 5:
            raise OSError("disk full")
        write(self, block, result)

    monkeypatch.setattr(LabelSink, "write", failing)
    with LocalModel(Blobs) as model:
        with pytest.raises(BlockError) as caught:
            apply(model, image, "seg", TILE, progress=False)
        assert caught.value.block.startswith("block 5 ") and isinstance(caught.value.__cause__, OSError)
        assert "OSError: disk full" in str(caught.value)
        finished = RunState(str(image), "seg").finished()
        assert 5 not in finished and {0, 1, 2, 3, 4} <= finished
        monkeypatch.setattr(LabelSink, "write", write)
        again = apply(model, image, "seg", TILE, progress=False)
    assert again["skipped"] == len(finished) and np.array_equal(labels_of(image, "seg"), reference)


@pytest.mark.parametrize(
    ("instances", "environ", "expected"),
    [
        (2, {"CUDA_VISIBLE_DEVICES": "0,1"}, ["0", "1"]),
        (2, {"CUDA_VISIBLE_DEVICES": "0,1", "NAHUAL_GPUS": "4,5,6,7"}, ["4,5", "6,7"]),
        (3, {"NAHUAL_GPUS": "2, 3"}, ["2", "3", "2"]),
        (1, {"CUDA_VISIBLE_DEVICES": "0,1"}, [None]),
        (2, {"CUDA_VISIBLE_DEVICES": "3"}, [None, None]),
        (2, {}, [None, None]),
    ],
)
def test_gpus_are_spread_over_instances(instances, environ, expected):
    assert spread_devices(instances, environ) == expected


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [entry.split(b"=", 1) for entry in f.read().split(b"\0") if b"=" in entry]
    return {key.decode(): value.decode() for key, value in items}


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the servers' environment from /proc")
def test_each_launched_instance_sees_its_own_gpu(monkeypatch):
    monkeypatch.delenv("NAHUAL_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    servers = []
    launch = nahual.launcher.launch

    def recorded(*args, **kwargs):
        servers.append(launch(*args, **kwargs))
        return servers[-1]

    monkeypatch.setattr(nahual.launcher, "launch", recorded)
    with connect_workers("threshold", {"threshold": 0.5}, env="current", instances=2) as workers:
        assert len(workers) == 2
        seen = sorted(_environ(server.pid)["CUDA_VISIBLE_DEVICES"] for server in servers)
    assert seen == ["0", "1"]
    assert all(server.returncode is not None for server in servers)


class ScaleReader(Blobs):
    """Blobs that reads the payload's ``scale`` and refuses a payload without the store's pixel size."""

    name = "scale-reader"
    contract = dataclasses.replace(Blobs.contract, reads_scale=True)

    def process(self, payload, **params):
        if payload.get("scale") != {"y": 0.25, "x": 0.5}:
            raise ValueError(f"scale {payload.get('scale')!r}")
        return super().process(payload, **params)


def test_only_a_model_that_reads_the_scale_gets_the_store_s_pixel_size(tmp_path, pixels):
    store = write_image(tmp_path / "scaled.zarr", pixels, "tyx", scale=(2.0, 0.25, 0.5), chunks=(1, 64, 64))
    with LocalModel(ScaleReader) as model:
        apply(model, store, "seg", TILE, progress=False)
    plan = make_plan(Blobs.contract, "labels", "tyx", pixels.shape, (1, 64, 64), TILE)
    reader = BlockReader(Blobs.contract, plan, list(plan.blocks()), zarr.open_array(f"{store}/0"), None, 1, {"x": 0.5})
    assert "scale" not in reader(next(iter(plan.blocks())))  # payloads of other models stay as they were
