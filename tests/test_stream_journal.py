"""The journal of block records: round trips, torn tails, SIGKILL mid-append, forgetting, several writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_until

from nahual.stream._journal import HEADER, Journal


def journals(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.journal"))


def test_records_come_back_with_their_arrays_to_another_reader(tmp_path):
    folder = tmp_path / "blocks"
    arrays = {
        "view": np.arange(12, dtype=np.uint32).reshape(3, 4),
        "area": np.array([1.5, 2.5], dtype=">f8"),
        "name": np.array(["nucleus", "cell"]),
        "none": np.zeros((0, 3), np.int64),
        "one": np.array(7, np.uint8),
    }
    writer = Journal(str(folder))
    writer.record(3, {"count": 2, "digest": "crc32:00000001"}, arrays)
    writer.record(5, {"count": 0})
    entries = Journal(str(folder)).entries()
    assert sorted(entries) == [3, 5]
    assert entries[3].info == {"count": 2, "digest": "crc32:00000001"} and entries[5].info == {"count": 0}
    back = entries[3].read()
    assert list(back) == list(arrays)
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        assert np.array_equal(back[key], value)
    assert entries[3].damage() is None and entries[5].damage() is None and entries[5].read() == {}
    assert len(journals(folder)) == 1  # one file for all of this writer's blocks


def test_arrays_of_python_objects_are_refused(tmp_path):
    with pytest.raises(TypeError, match="side array 'rows' holds Python objects"):
        Journal(str(tmp_path)).record(0, {}, {"rows": np.array([{}, None], dtype=object)})


def test_a_torn_last_entry_is_not_a_record_and_the_next_writer_starts_its_own_journal(tmp_path):
    folder = tmp_path / "blocks"
    writer = Journal(str(folder))
    for index in range(3):
        writer.record(index, {"i": index}, {"view": np.full((8, 8), index, np.uint16)})
    (journal,) = journals(folder)
    full = journal.stat().st_size
    os.truncate(journal, full - 5)  # a kill in the middle of the last append
    assert sorted(Journal(str(folder)).entries()) == [0, 1]
    os.truncate(journal, full - 5 - 200)  # a tail of only part of a header is no record either
    later = Journal(str(folder))
    assert sorted(later.entries()) == [0]
    later.record(2, {"i": 2})
    assert sorted(Journal(str(folder)).entries()) == [0, 2] and len(journals(folder)) == 2


def test_a_damaged_entry_ends_its_journal_and_damaged_side_data_is_named(tmp_path):
    folder = tmp_path / "blocks"
    writer = Journal(str(folder))
    for index in range(3):
        writer.record(index, {"i": index}, {"view": np.full((8, 8), index, np.uint16)})
    entries = Journal(str(folder)).entries()
    (journal,) = journals(folder)
    data = bytearray(journal.read_bytes())
    data[(entries[1].data_start + entries[1].data_start + entries[1].data_length) // 2] ^= 0xFF
    journal.write_bytes(bytes(data))
    damage = Journal(str(folder)).entries()[1].damage()
    assert damage.startswith(f"its side data in {journal} (bytes {entries[1].data_start}-")
    assert "recorded crc32:" in damage and Journal(str(folder)).entries()[0].damage() is None
    data[entries[2].offset + HEADER.size + 2] ^= 0xFF  # block 2's meta: the scan stops there, block 2 is redone
    journal.write_bytes(bytes(data))
    assert sorted(Journal(str(folder)).entries()) == [0, 1]


def test_forget_drops_every_record_of_a_block_and_a_new_record_counts(tmp_path):
    folder = str(tmp_path / "blocks")
    first, second = Journal(folder), Journal(folder)  # two runs over the same block, e.g. overlapping shards
    first.record(4, {"run": 1})
    first.record(5, {"run": 1})
    second.record(4, {"run": 2})
    assert Journal(folder).entries()[4].info == {"run": 2}  # the latest journal's record
    third = Journal(folder)
    third.forget(4)
    assert 4 not in third.entries() and sorted(Journal(folder).entries()) == [5]
    third.record(4, {"run": 3})
    assert Journal(folder).entries()[4].info == {"run": 3}
    third.forget(7)  # nothing recorded: nothing to drop
    assert sorted(Journal(folder).entries()) == [4, 5]


def test_threads_and_writers_in_one_folder_lose_nothing(tmp_path):
    folder = str(tmp_path / "blocks")
    writers = [Journal(folder), Journal(folder)]

    def record(start: int) -> None:
        for index in range(start, 400, 8):
            writers[index % 2].record(index, {"i": index}, {"view": np.full(50, index, np.int32)})

    threads = [threading.Thread(target=record, args=(start,)) for start in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = Journal(folder).entries()
    assert sorted(entries) == list(range(400))
    assert all(np.array_equal(e.read()["view"], np.full(50, i, np.int32)) for i, e in entries.items())
    assert len(journals(Path(folder))) == 2


def test_sigkill_while_recording_leaves_whole_records_only(tmp_path):
    folder = tmp_path / "blocks"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from nahual.stream._journal import Journal
        journal = Journal({str(folder)!r})
        index = 0
        while True:
            journal.record(index, {{"i": index}}, {{"view": np.random.default_rng(index).integers(0, 9, 200_000)}})
            index += 1
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_until(lambda: len(Journal(str(folder)).entries(refresh=True)) >= 20, timeout=60, what="20 records")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    entries = Journal(str(folder)).entries()
    assert sorted(entries) == list(range(len(entries)))  # records end at the kill, none half-kept
    for index, entry in entries.items():
        assert entry.damage() is None
        assert np.array_equal(entry.read()["view"], np.random.default_rng(index).integers(0, 9, 200_000))
