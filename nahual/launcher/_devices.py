"""Environment launcher layer: which GPUs each of several instances of one model may see.

A run that launches ``instances`` servers of one model (``nahual apply --env
SPEC --instances N``) gives each its own part of the GPUs this process may
use, through the server's ``CUDA_VISIBLE_DEVICES``, so that two instances never
share a GPU while another idles. The GPUs are those of ``$NAHUAL_GPUS`` when set
(a list that does not hide any GPU from this process), else of this process's
own ``$CUDA_VISIBLE_DEVICES``; with neither, or a single GPU, the servers
inherit this process's environment unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["GPU_LIST_VARIABLES", "spread_devices"]

#: Where the GPUs to spread come from, first match wins.
GPU_LIST_VARIABLES = ("NAHUAL_GPUS", "CUDA_VISIBLE_DEVICES")


def _listed(environ: Mapping[str, str]) -> list[str]:
    for name in GPU_LIST_VARIABLES:
        value = environ.get(name)
        if value is not None:
            return [gpu.strip() for gpu in value.split(",") if gpu.strip()]
    return []


def spread_devices(instances: int, environ: Mapping[str, str] | None = None) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each of ``instances`` servers; None keeps the parent's.

    With at least as many GPUs as instances, each instance gets a contiguous,
    disjoint share (4 GPUs, 2 instances: ``"0,1"`` and ``"2,3"``); with fewer,
    instances take one GPU each in turn (2 GPUs, 3 instances: ``"0"``, ``"1"``, ``"0"``).

    Parameters
    ----------
    instances : int
        Servers of one model to be launched.
    environ : mapping, optional
        Where to read ``NAHUAL_GPUS`` and ``CUDA_VISIBLE_DEVICES`` (this process's environment by default).

    Returns
    -------
    list of str or None
        One entry per instance, all None when there is nothing to spread.
    """
    gpus = _listed(os.environ if environ is None else environ)
    if instances < 2 or len(gpus) < 2:
        return [None] * instances
    if len(gpus) < instances:
        return [gpus[i % len(gpus)] for i in range(instances)]
    return [",".join(gpus[i * len(gpus) // instances : (i + 1) * len(gpus) // instances]) for i in range(instances)]
