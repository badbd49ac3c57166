"""glibc's allocator in nahual's processes: arenas capped, thresholds fixed, the user's own settings kept."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys

import pytest

from nahual._malloc import SERVER, STREAMING

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="these are glibc's malloc settings")

ARENAS = """
import ctypes, sys, threading
from nahual._malloc import STREAMING, tune_malloc
if sys.argv[1] == "tuned":
    tune_malloc(STREAMING)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
start, hold = threading.Barrier(9), threading.Barrier(9)
def allocate():
    start.wait()
    libc.malloc(4096)  # a thread's first malloc takes an arena of its own while the cap allows
    hold.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
start.wait()
hold.wait()
sys.stderr.flush()
libc.malloc_stats()  # one "Arena N:" section per arena, on stderr
"""


def arenas(mode: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, env={**clean, **env}, check=True
    )
    return len(re.findall(r"^Arena \d+:", done.stderr, flags=re.MULTILINE))


def test_streaming_caps_the_arenas_eight_threads_take_at_two():
    assert arenas("tuned") <= STREAMING["arenas"] < arenas("default")


def test_a_cap_the_user_set_in_the_environment_is_kept():
    assert arenas("tuned", MALLOC_ARENA_MAX="4") == 4


@pytest.mark.parametrize("name", ["SERVER", "STREAMING"])
def test_the_settings_are_applied_and_those_the_environment_sets_are_left(name):
    """In a child process: the settings are the process's own for the rest of its life.

    Both ``nahual serve`` and ``nahual apply`` fix the thresholds (glibc's rising ones cost page faults a block)."""
    settings = {"SERVER": SERVER, "STREAMING": STREAMING}[name]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    script = f"import json; from nahual._malloc import {name}, tune_malloc; print(json.dumps(tune_malloc({name})))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        env={**clean, "MALLOC_TRIM_THRESHOLD_": "1048576"},
    )  # fmt: skip
    assert json.loads(done.stdout) == {k: v for k, v in settings.items() if k != "trim_threshold"}
    assert {"mmap_threshold", "arenas"} <= settings.keys()
