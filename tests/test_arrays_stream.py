"""Reading numpy's pickled arrays (Cellpose size models) without ``pickle``."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from nahual.models._arrays_stream import read_arrays_stream

SIZE_MODEL = {
    "A": np.arange(256.0),
    "smean": np.ones(256, np.float32),
    "ymean": np.float64(1.5),
    "diam_mean": np.float64(30.0),
    "grid": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
}


@pytest.mark.parametrize("protocol", [3, 4])  # np.save writes 3
def test_a_dict_of_arrays_comes_back_equal(protocol: int) -> None:
    stream = pickle.dumps(np.array(SIZE_MODEL, dtype=object), protocol=protocol)  # as np.save writes it
    read = read_arrays_stream(stream)
    assert set(read) == set(SIZE_MODEL)
    for key, value in SIZE_MODEL.items():
        assert np.asarray(read[key]).dtype == np.asarray(value).dtype
        np.testing.assert_array_equal(read[key], value)


def test_np_save_output_reads_past_its_header() -> None:
    buffer = io.BytesIO()
    np.save(buffer, SIZE_MODEL, allow_pickle=True)
    buffer.seek(0)
    assert np.lib.format.read_magic(buffer) == (1, 0)
    np.lib.format.read_array_header_1_0(buffer)
    np.testing.assert_array_equal(read_arrays_stream(buffer.read())["A"], SIZE_MODEL["A"])


@pytest.mark.parametrize(
    "value, match",
    [
        (np.array([os.system], dtype=object), "holds posix.system"),
        ({"a": print}, "holds builtins.print"),
        ({"a": {1, 2}}, "opcode"),
    ],
)
def test_anything_but_arrays_is_refused_before_it_runs(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_arrays_stream(pickle.dumps(value, protocol=4))
