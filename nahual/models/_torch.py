"""The torch device of a deep-model adapter, checked against what this machine has.

Layer: model zoo support, shared by the torch adapters (Cellpose, Trackastra);
torch is imported only when a model loads.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["torch_device"]


def torch_device(model: str, device: str, threads: int | None) -> Any:
    """The torch device ``device`` names, checked against what this machine has.

    Raises
    ------
    ConfigError
        One line when the device is not here (a CPU build of torch, no GPU, an index too high).
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            build = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            seen = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ConfigError(
                f"{model}: device {device!r} asked for, but torch {torch.__version__} ({build}) sees {seen}"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{model}: device 'mps' asked for, but torch {torch.__version__} has no MPS device here")
    return torch.device(device)
