"""How a run is cut and paced: one frozen :class:`StreamOptions`, parsed once at each edge.

Zarr streaming layer, pure values (no I/O). The CLI parses its flags with
:meth:`StreamOptions.from_cli`, the workflow its ``streaming:`` config with
:meth:`StreamOptions.from_config`; both hand the whole object on, so every
default lives here once. :meth:`StreamOptions.to_cli` writes the flags that
give the same object back (the workflow's rules call the CLI with them).
Errors name the option, not a flag: the same check serves both edges.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError

__all__ = ["DEFAULT_TILE", "StreamOptions", "format_tile", "parse_shard", "parse_tile"]

#: Tile of spatial axes when none is given: large enough that per-request costs vanish.
#: The one default of every run (``apply``, ``nahual apply``, the workflow); read-only.
DEFAULT_TILE: Mapping[str, int] = MappingProxyType({"y": 1024, "x": 1024})


def parse_tile(value: str | Mapping[str, int] | None) -> dict[str, int]:
    """``"y=1024,x=1024"`` or a mapping into ``{"y": 1024, "x": 1024}``; ``""``, ``"none"``, None, ``{}``: whole frames.

    Raises
    ------
    ConfigError
        For anything but positive sizes of z, y or x.
    """
    if isinstance(value, Mapping):
        items = list(value.items())
    elif value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "whole")):
        return {}
    elif isinstance(value, str):
        items = []
        for part in value.split(","):
            axis, sep, size = part.partition("=")
            if not sep or not size.strip().isdigit():
                raise ConfigError(f"tile takes AXIS=SIZE pairs such as y=1024,x=1024, got {value!r}")
            items.append((axis.strip().lower(), int(size)))
    else:
        raise ConfigError(f"tile takes AXIS=SIZE pairs or a mapping such as {{y: 1024, x: 1024}}, got {value!r}")
    tile = {}
    for axis, size in items:
        if not isinstance(axis, str) or len(axis) != 1 or axis not in "zyx":
            raise ConfigError(f"tile sizes are only for z, y or x, got axis {axis!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"tile size of {axis} must be a positive integer, got {size!r}")
        tile[axis] = size
    return tile


def format_tile(tile: Mapping[str, int]) -> str:
    """A tile as the option is written, ``y=1024,x=1024`` (``none``: whole frames); :func:`parse_tile` reads it."""
    return ",".join(f"{axis}={size}" for axis, size in tile.items()) or "none"


def parse_shard(value: str | Sequence[int] | None) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N) or ``(I, N)`` into ``(I, N)``; None is ``(0, 1)``, the whole run.

    Raises
    ------
    ConfigError
        Unless 0 <= I < N.
    """
    if value is None:
        return 0, 1
    if isinstance(value, str):
        index_s, sep, count_s = value.partition("/")
        if not sep or not index_s.strip().isdigit() or not count_s.strip().isdigit():
            raise ConfigError(f"shard takes I/N with 0 <= I < N, got {value!r}")
        index, count = int(index_s), int(count_s)
    elif isinstance(value, Sequence) and len(value) == 2:
        index, count = value
    else:
        raise ConfigError(f"shard takes I/N with 0 <= I < N, got {value!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (index, count)) or not 0 <= index < count:
        raise ConfigError(f"shard takes I/N with 0 <= I < N, got {index}/{count}")
    return index, count


def _optional_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0 or null, got {value!r}")
    return value


def _count(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


@dataclass(frozen=True)
class StreamOptions:
    """How one ``apply`` run reads, cuts and paces its blocks.

    Parameters
    ----------
    tile : str or mapping, optional
        Tile size per spatial axis (``"y=512,x=512"`` or ``{"y": 512, "x": 512}``);
        ``{}``/``"none"`` for whole frames. Default :data:`DEFAULT_TILE`.
    halo : int or None
        Pixels read around each tile; None takes the model's declared halo.
    level : int
        Resolution level of an OME-Zarr image to read.
    channel : int or None
        The only channel sent to a model that takes no channel axis.
    inflight : int
        Requests in flight at once, across all workers.
    shard : str or (int, int), optional
        ``"I/N"``: only blocks whose index is I modulo N; None for all.
    retries : int
        Reconnects (relaunches) allowed per block after a transport failure.

    Raises
    ------
    ConfigError
        Naming the option and what was found.
    """

    tile: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TILE))
    halo: int | None = None
    level: int = 0
    channel: int | None = None
    inflight: int = 4
    shard: tuple[int, int] = (0, 1)
    retries: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "tile", parse_tile(self.tile))
        set_(self, "shard", parse_shard(self.shard))
        set_(self, "halo", _optional_count("halo", self.halo))
        set_(self, "channel", _optional_count("channel", self.channel))
        set_(self, "level", _count("level", self.level, 0))
        set_(self, "inflight", _count("inflight", self.inflight, 1))
        set_(self, "retries", _count("retries", self.retries, 0))

    @property
    def sharded(self) -> bool:
        """True when this run does only part of the blocks."""
        return self.shard[1] > 1

    def replace(self, **changes: Any) -> StreamOptions:
        """A copy with some fields changed (checked like the original)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "streaming") -> StreamOptions:
        """Options from a config mapping (the workflow's ``streaming:``, merged with an image's own keys).

        Keys that are not options (``shards``, the workflow's count of consumer
        jobs) are for the caller and ignored here.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{key: value for key, value in config.items() if key in names})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @classmethod
    def from_cli(cls, args: Any) -> StreamOptions:
        """Options from parsed ``nahual apply`` arguments (attributes named as the fields)."""
        names = [f.name for f in dataclasses.fields(cls)]
        given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
        return cls(**given)

    def to_cli(self) -> list[str]:
        """The ``nahual apply`` flags that :meth:`from_cli` turns back into these options."""
        args = ["--tile", format_tile(self.tile), "--level", str(self.level), "--inflight", str(self.inflight)]
        args += ["--retries", str(self.retries)]
        if self.halo is not None:
            args += ["--halo", str(self.halo)]
        if self.channel is not None:
            args += ["--channel", str(self.channel)]
        if self.sharded:
            args += ["--shard", f"{self.shard[0]}/{self.shard[1]}"]
        return args
