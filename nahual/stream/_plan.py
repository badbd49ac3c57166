"""Plan a run as blocks: iterated axes, spatial tiles, halos, chunk alignment and shards.

Zarr streaming layer, pure arithmetic (no Zarr I/O). The axes the model does not
take (t for a 2-D segmenter, z for a 2-D model on a stack) are iterated one
index at a time; the spatial axes the model takes are cut into tiles, each read
with a halo clipped at the image border. Output chunks are chosen so that every
block owns whole chunks: two blocks (or two shards) never write into one chunk.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..errors import ConfigError, ContractError
from ..model import Contract
from ._options import DEFAULT_TILE, StreamOptions, format_tile

__all__ = ["Block", "Plan", "choose_model_axes", "make_plan"]

#: Kinds whose blocks must be whole frames whatever the model allows.
WHOLE_FRAME_KINDS = ("tracks", "features")

#: Most blocks a run may have: each costs a request, a record and its share of
#: the plan's memory, so a plan past this is a tile chosen far too small.
MAX_BLOCKS = 1_000_000


@dataclass(frozen=True)
class Block:
    """One request: a core box (what it owns) and a read box (core plus clipped halo).

    Boxes are (start, stop) per axis of the source array; iterated axes have length 1.
    """

    index: int
    start: tuple[int, ...]
    stop: tuple[int, ...]
    read_start: tuple[int, ...]
    read_stop: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """How a source array is cut into blocks for one model.

    Attributes
    ----------
    axes : str
        Axes of the source array.
    shape : tuple of int
        Shape of the source array.
    model_axes : str
        Axes order of the arrays sent to the model (may hold a ``c`` the source lacks).
    iterated : str
        Source axes taken one index per block.
    tile : dict of str to int
        Tile size per tiled spatial axis (axes not listed are whole).
    halo : int
        Context read around each tile on tiled axes.
    channel : int or None
        The only channel read, when the model takes no channel axis.
    image_chunks : tuple of int
        Chunks of the source array, the basis of the output chunks.
    """

    axes: str
    shape: tuple[int, ...]
    model_axes: str
    iterated: str
    tile: dict[str, int]
    halo: int
    channel: int | None
    image_chunks: tuple[int, ...]

    @property
    def out_axes(self) -> str:
        """Axes of label outputs: the source axes without ``c``."""
        return self.axes.replace("c", "")

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of label outputs."""
        return tuple(n for a, n in zip(self.axes, self.shape, strict=True) if a != "c")

    @property
    def out_chunks(self) -> tuple[int, ...]:
        """Output chunks: the image's, but 1 on iterated axes and whole tiles where tiles are not chunk multiples."""
        chunks = []
        for axis, size, chunk in zip(self.axes, self.shape, self.image_chunks, strict=True):
            if axis == "c":
                continue
            if axis in self.iterated:
                chunks.append(1)
            elif axis in self.tile and self.tile[axis] % chunk:
                chunks.append(self.tile[axis])
            else:
                chunks.append(min(chunk, size))
        return tuple(chunks)

    def _ranges(self, pos: int) -> list[tuple[int, int]]:
        axis, size = self.axes[pos], self.shape[pos]
        if axis in self.iterated:
            if axis == "c" and self.channel is not None:
                return [(self.channel, self.channel + 1)]
            return [(i, i + 1) for i in range(size)]
        if axis in self.tile:
            step = self.tile[axis]
            return [(s, min(s + step, size)) for s in range(0, size, step)]
        if axis == "c" and self.channel is not None:
            return [(self.channel, self.channel + 1)]
        return [(0, size)]

    def counts(self) -> dict[str, int]:
        """Blocks along each axis that is cut (iterated or tiled); the run has their product."""
        counts = {a: len(self._ranges(pos)) for pos, a in enumerate(self.axes)}
        return {a: n for a, n in counts.items() if n > 1}

    def blocks_apart(self, steps: dict[str, int]) -> int:
        """How far apart in :meth:`blocks` order two blocks lie that are ``steps[axis]`` blocks apart on each axis."""
        counts, stride, apart = self.counts(), 1, 0
        for axis in reversed(self.axes):
            apart += stride * steps.get(axis, 0)
            stride *= counts.get(axis, 1)
        return apart

    def blocks(self) -> list[Block]:
        """Every block of the run, in a fixed order (C order over iterated axes, then tiles)."""
        ranges = [self._ranges(pos) for pos in range(len(self.axes))]
        out = []
        for index, box in enumerate(itertools.product(*ranges)):
            start = tuple(s for s, _ in box)
            stop = tuple(e for _, e in box)
            read_start = tuple(
                max(0, s - self.halo) if a in self.tile else s for a, s in zip(self.axes, start, strict=True)
            )
            read_stop = tuple(
                min(n, e + self.halo) if a in self.tile else e
                for a, e, n in zip(self.axes, stop, self.shape, strict=True)
            )
            out.append(Block(index, start, stop, read_start, read_stop))
        return out

    def out_voxels(self, block: Block) -> int:
        """Number of output pixels a block's core owns (bounds its count of labels)."""
        return math.prod(e - s for a, s, e in zip(self.axes, block.start, block.stop, strict=True) if a != "c")

    def describe(self, block: Block) -> str:
        """Where a block is, for messages: ``t=3 y=0:1024 x=1024:2048``."""
        parts = []
        for axis, s, e, n in zip(self.axes, block.start, block.stop, self.shape, strict=True):
            if axis in self.iterated or (axis == "c" and self.channel is not None):
                parts.append(f"{axis}={s}")
            elif (s, e) != (0, n):
                parts.append(f"{axis}={s}:{e}")
        return f"block {block.index}" + (f" ({' '.join(parts)})" if parts else "")

    def to_dict(self) -> dict:
        """JSON form, stored with the run so that a resumed run can check it plans the same blocks."""
        return {
            "axes": self.axes,
            "shape": list(self.shape),
            "model_axes": self.model_axes,
            "iterated": self.iterated,
            "tile": dict(self.tile),
            "halo": self.halo,
            "channel": self.channel,
            "chunks": list(self.image_chunks),
        }


def _channels(axes: str, shape: tuple[int, ...], channel: int | None) -> int:
    """How many channels the model will see (1 when the store has no c or one is chosen).

    Raises
    ------
    ConfigError
        When the channel option names a channel the store does not have.
    """
    if "c" not in axes:
        if channel is not None:
            raise ConfigError(
                f"the channel option is {channel} but the store has no channel axis (axes {axes!r}): leave it out"
            )
        return 1
    size = shape[axes.index("c")]
    if channel is not None and not 0 <= channel < size:
        raise ConfigError(f"channel {channel} does not exist: the store has {size} channels (0..{size - 1})")
    return 1 if channel is not None else size


def choose_model_axes(
    contract: Contract, axes: str, shape: tuple[int, ...], channel: int | None = None, kind: str = "labels"
) -> str:
    """Pick the model's axes order that covers the most non-singleton source axes.

    A ``c`` the source lacks is sent as a singleton. Except for trackers, orders
    without ``t`` come first (one frame per request streams better than a whole
    series). The first order listed wins ties.

    Raises
    ------
    ContractError
        When no order fits, or the model needs more channels than the store has.
    """
    sizes = dict(zip(axes, shape, strict=True))
    orders = contract.axes or (axes.replace("t", ""),)
    fitting = [m for m in orders if set(m) - {"c"} <= set(axes)]
    if not fitting:
        raise ContractError(f"model expects axes {' or '.join(orders)}; the store has axes {axes!r}")

    def rank(m: str) -> tuple[bool, int, int]:
        return ("t" in m) == (kind == "tracks"), sum(sizes.get(a, 1) > 1 for a in m), -orders.index(m)

    best = max(fitting, key=rank)
    count = _channels(axes, shape, channel)
    if "c" in best and contract.channels and count < contract.channels:
        raise ContractError(f"model expects at least {contract.channels} channels; the store has {count}")
    return best


def make_plan(
    contract: Contract,
    kind: str,
    axes: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    options: StreamOptions | None = None,
) -> Plan:
    """Plan blocks for a model on a source array.

    Parameters
    ----------
    contract : Contract
        The model's contract (axes, channels, tiling, halo).
    kind : str
        Output kind; trackers and measurements always get whole frames.
    axes, shape, chunks : str, tuple of int, tuple of int
        The source array.
    options : StreamOptions, optional
        Its ``tile``, ``halo`` (None: the model's declared halo) and ``channel``
        (the channel to read when the model takes no channel axis) are used;
        :class:`StreamOptions` defaults when not given.

    Raises
    ------
    ContractError, ConfigError
        When the model cannot take this store, or the options do not fit it (naming the option).
    """
    options = options or StreamOptions()
    channel = options.channel
    model_axes = choose_model_axes(contract, axes, shape, channel, kind)
    count = _channels(axes, shape, channel)
    if "c" not in model_axes and count > 1 and kind in ("labels", "tracks"):
        raise ConfigError(
            f"the model takes no channel axis (axes {model_axes!r}) but the store has {count} channels; "
            "choose one with the channel option (--channel N, or images.NAME.channel in the workflow)"
        )
    iterated = "".join(a for a in axes if a not in model_axes)
    whole = not contract.tiling or kind in WHOLE_FRAME_KINDS
    tile = {} if whole else dict(options.tile)
    for axis in list(tile):
        if axis not in model_axes:
            raise ConfigError(
                f"the tile option names axis {axis!r}, which the model does not take (axes {model_axes!r})"
            )
        if tile[axis] >= shape[axes.index(axis)]:
            del tile[axis]
    halo = contract.halo if options.halo is None else options.halo
    _check_halo(tile, halo, "the model's declared halo" if options.halo is None else "the halo option")
    plan = Plan(axes, tuple(shape), model_axes, iterated, tile, halo if tile else 0, channel, tuple(chunks))
    counts = plan.counts()
    if math.prod(counts.values()) > MAX_BLOCKS:
        cut = " x ".join(f"{n:,} along {a}" for a, n in counts.items())
        tiles = format_tile(tile)
        raise ConfigError(
            f"the tile option {tiles} cuts the input into {math.prod(counts.values()):,} blocks ({cut}), "
            f"more than {MAX_BLOCKS:,}: choose a larger tile, such as the default {format_tile(DEFAULT_TILE)}"
        )
    return plan


def _check_halo(tile: dict[str, int], halo: int, source: str) -> None:
    """Refuse a halo larger than a tile: a block would read more than three times its width along that axis.

    Raises
    ------
    ConfigError
        Naming the halo, where it came from, and the tile it exceeds.
    """
    small = {a: n for a, n in tile.items() if n < halo}
    if small:
        raise ConfigError(
            f"halo {halo} ({source}) is larger than the tile ({format_tile(small)}): each block would read more "
            f"than three times its width along that axis; choose a tile of at least {halo} or a smaller halo"
        )
