"""How glibc's allocator behaves in nahual's own processes: ``nahual serve`` and ``nahual apply``.

Core layer (stdlib only). Two defaults of glibc's malloc cost these processes
dearly, measured on a threshold server taking 256x256 tiles:

- its mmap threshold starts at 128 KiB and only rises as large blocks are
  freed, so a model's temporaries (a few MiB a block) went to fresh mappings
  or to a heap trimmed after every call: about 870 page faults a block, and
  the model ran 25% slower inside the server than in a process whose reads had
  raised the threshold;
- it gives each thread an arena of its own (up to 8 per core), and pages a
  thread frees stay in its arena: with a run's many threads, ``apply``'s
  peak RSS at 8192² grew by 100-200 MiB.

:func:`tune_malloc` sets both at a process's start, before its threads; a
setting the user made through glibc's own variable (``MALLOC_ARENA_MAX``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) is left as it is.
Elsewhere than on glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["SERVER", "STREAMING", "MallocSettings", "tune_malloc"]

#: ``mallopt`` parameters (``malloc.h``) and the variable that sets each from the environment.
_PARAMETERS = {
    "arenas": (-8, "MALLOC_ARENA_MAX"),
    "mmap_threshold": (-3, "MALLOC_MMAP_THRESHOLD_"),
    "trim_threshold": (-1, "MALLOC_TRIM_THRESHOLD_"),
}

MallocSettings = dict[str, int]

#: A model server: few arenas, and blocks up to 32 MiB (glibc's own ceiling for its rising threshold) from the heap,
#: whose top is given back only beyond 64 MiB, so that a model's per-call temporaries reuse the same pages.
SERVER: MallocSettings = {"arenas": 2, "mmap_threshold": 32 * 2**20, "trim_threshold": 64 * 2**20}
#: ``nahual apply``: the same. With glibc's rising thresholds, the chunk files read, the chunks decoded and the
#: payloads cast still took about 100 page faults a 256x256 tile, and a fifth of this process's CPU.
STREAMING: MallocSettings = dict(SERVER)


def tune_malloc(settings: MallocSettings) -> MallocSettings:
    """Apply ``settings`` (``arenas``, ``mmap_threshold``, ``trim_threshold``) through ``mallopt``.

    Returns
    -------
    dict
        The settings applied: none elsewhere than on glibc, none the environment sets already.
    """
    if platform.libc_ver()[0] != "glibc":
        return {}
    mallopt = ctypes.CDLL(None).mallopt
    applied = {}
    for name, value in settings.items():
        parameter, variable = _PARAMETERS[name]
        if variable not in os.environ and mallopt(parameter, int(value)) == 1:
            applied[name] = int(value)
    return applied
