"""The one interface of a run's output writers: :class:`Sink`.

Zarr streaming layer. A run hands each block's result to its sink as the
block completes (in any order), and once every block is recorded asks it to
finalize: stitch labels, assemble a table. The sink records each block in the
run's state itself, last, so that a run killed midway leaves every block
either recorded or not, with digests of what it wrote, which :meth:`Sink.damage`
checks before a resumed run skips the block. A new output kind is one
subclass, listed in ``_jobs.SINKS``; the helpers every writer needs live here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import BlockError
from ._journal import DamagedRecord
from ._ome import image_group
from ._omewrite import create_label_array

if TYPE_CHECKING:
    import numpy as np
    import zarr

    from ._ome import Target
    from ._plan import Block, Plan
    from ._resume import RunState

__all__ = ["FINISHER", "REDO", "Sink"]

#: The worker named by a block whose recorded data was found damaged while finishing the output.
FINISHER = "this process (finishing the output)"
#: What to do about a block whose recorded data is damaged: a resumed run checks and redoes it.
REDO = "run the same apply again to redo its blocks"


@dataclass
class Sink(ABC):
    """Writes one output of a run (labels, tracks, a table) from its blocks' results.

    Parameters
    ----------
    target : Target
        The image group the output goes into, with its Zarr format and pixel size.
    plan : Plan
        The run's blocks.
    state : RunState
        The output's state folder, where blocks are recorded.
    labels : zarr.Array, optional
        The label image the run reads besides the image (a tracker's ``label``
        values refer to it); None when the run reads none.
    """

    target: Target
    plan: Plan
    state: RunState
    labels: zarr.Array | None = None

    #: The group under the image (``labels`` or ``tables``) whose ``NAME`` keeps the run's record once complete.
    folder: ClassVar[str] = "labels"
    #: The layout of the blocks' records, part of the run's identity: a run recorded in another layout (by an
    #: earlier nahual) is refused, not resumed into an output mixing the two.
    records: ClassVar[int] = 1

    @abstractmethod
    def check(self) -> None:
        """Refuse, before anything is written, a plan this output cannot be made from.

        Raises
        ------
        ConfigError
            Naming what the output needs (whole frames, a label image...).
        """

    @abstractmethod
    def prepare(self) -> None:
        """Create what the blocks write into; runs again when a run resumes, so it opens what exists."""

    @abstractmethod
    def write(self, block: Block, result: Any) -> None:
        """Write one block's result, then record the block in :attr:`state`.

        Raises
        ------
        ContractError
            When the result is not what a model of this kind must return.
        """

    @abstractmethod
    def finalize(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """Complete the output once every block is recorded; returns a small JSON summary.

        ``provenance`` (model, params, versions, plan) is stored with the output.
        Finalizing again must give the same output: it reads only recorded data.
        """

    def damage(self, block: Block) -> str | None:
        """What is wrong with a finished block's recorded data, or None when it is intact.

        Checks the digest of its side data; a sink that writes an intermediate array checks that too.
        """
        return self.state.side_damage(block.index)

    def side_arrays(self, block: Block, *names: str) -> dict[str, np.ndarray]:
        """A finished block's side arrays (those of ``names``, or all), checked against their digest.

        Raises
        ------
        BlockError
            Naming the block when its side data is damaged.
        """
        try:
            return self.state.arrays(block.index, names)
        except DamagedRecord as exc:
            raise BlockError(self.plan.describe(block), FINISHER, f"{exc}; {REDO}") from None

    @property
    def name(self) -> str:
        """The output's name (``labels/NAME``, ``tables/NAME``...)."""
        return self.state.name

    def create_label_image(self, dtype: np.dtype | type, attrs: dict[str, Any] | None = None) -> zarr.Array:
        """Create (or replace) ``labels/NAME``: the plan's output axes, shape and chunks, the source's pixel size."""
        plan = self.plan
        scale = tuple(s for a, s in zip(plan.axes, self.target.scale, strict=True) if a != "c")
        return create_label_array(
            image_group(self.target.image_path),
            self.name,
            plan.out_axes,
            plan.out_shape,
            plan.out_chunks,
            dtype,
            scale,
            attrs,
        )
