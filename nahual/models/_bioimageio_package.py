"""A bioimage.io package as the ``bioimageio`` adapter sees it: where it is, what it declares, how tiles fit it.

Layer: model zoo support for :mod:`nahual.models.bioimageio`. bioimageio.spec
is imported inside the functions only. A package is only ever read from local
files: a source that does not exist is refused here, before bioimageio.spec
sees it, because bioimageio.spec takes an unknown path for a zoo id and asks
the internet; a package whose weights are a URL is refused too. Everything a
user can get wrong becomes one line (a :class:`~nahual.errors.WeightsError`
for a missing package, a :class:`~nahual.errors.ConfigError` for a
description that does not validate or uses what nahual cannot map, a
:class:`~nahual.errors.ContractError` for axes nahual has no name for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ContractError, WeightsError
from ..weights import weight_path

__all__ = [
    "DESCRIPTION_FILES",
    "INSTANCE_OPS",
    "Layout",
    "about",
    "description_file",
    "read_description",
    "read_layout",
    "tolerance",
    "valid_size",
]

#: The description file of a package folder, newest name first.
DESCRIPTION_FILES = ("bioimageio.yaml", "rdf.yaml")
#: Post-processing whose result is instance labels as it is.
INSTANCE_OPS = ("stardist_postprocessing", "cellpose_flow_dynamics")
#: The spec's tolerance where a package declares none (``ReproducibilityTolerance``'s defaults).
DEFAULT_TOLERANCE = {"relative": 1e-3, "absolute": 1e-3}
#: Validation problems named in the one-line error of a description that does not validate.
SHOWN_PROBLEMS = 3


def description_file(source: str) -> Path:
    """The description file that the ``source`` param names, without reading it.

    A value with a ``/``, starting with ``~`` or ``.``, or ending in ``.zip``,
    ``.yaml`` or ``.yml`` is a path (a package folder, its zip, or its yaml
    file); anything else is a package name in nahual's weights cache
    (``nahual weights fetch|add bioimageio NAME``).

    Raises
    ------
    WeightsError
        One line, when nothing is there, or a folder holds no description.
    """
    is_path = "/" in source or source.startswith(("~", ".")) or source.endswith((".zip", ".yaml", ".yml"))
    if not is_path:
        path = weight_path("bioimageio", source)
    else:
        path = Path(source).expanduser().absolute()
        if not path.exists():
            raise WeightsError(f"bioimageio package {path} does not exist (param source={source!r})")
    if path.is_dir():
        found = [path / name for name in DESCRIPTION_FILES if (path / name).is_file()]
        if not found:
            raise WeightsError(f"bioimageio package folder {path} holds no {' or '.join(DESCRIPTION_FILES)}")
        return found[0]
    return path


def read_description(path: Path) -> Any:
    """The package's model description, converted to the newest format bioimageio.spec knows.

    Read without bioimageio.spec's file checks, which download every file a
    description names by URL (to hash it); the adapter refuses weights that
    are a URL itself.

    Raises
    ------
    ConfigError
        One line naming the file and its first problems: unreadable YAML, a
        description that does not validate, or one that is no model.
    """
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_5

    try:
        descr = load_description(path, format_version="latest", perform_io_checks=False)
    except Exception as exc:  # ruyaml's, zipfile's and pydantic's own errors: one line naming the file
        raise ConfigError(f"bioimageio package {path} does not read: {_first_line(exc)}") from exc
    if isinstance(descr, InvalidDescr):
        problems = [f"{'.'.join(map(str, e.loc)) or 'top level'}: {e.msg}" for e in descr.validation_summary.errors]
        more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
        raise ConfigError(f"bioimageio package {path} is not valid: {'; '.join(problems[:SHOWN_PROBLEMS])}{more}")
    if not isinstance(descr, v0_5.ModelDescr):
        found = getattr(descr, "type", type(descr).__name__)
        raise ConfigError(
            f"bioimageio package {path} describes a {found} in format {descr.format_version}, not a model"
        )
    return descr


def _first_line(exc: BaseException) -> str:
    """One line of a reader's error: a YAML error's problem and where it is, else the first line of its text."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"{getattr(exc, 'problem', None) or 'malformed YAML'} (line {mark.line + 1}, column {mark.column + 1})"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Layout:
    """How nahual's arrays map onto the package's input and output tensors.

    Attributes
    ----------
    input_id, output_id : str
        The tensors used.
    input_dims, output_dims : tuple of str
        The package's axis ids of each tensor, in its order, batch included.
    input_letters, output_letters : str
        nahual's names of those axes (``b`` the batch; an output's space and
        time axes named after the input axes they are on).
    sizes : dict
        Input axis name -> (least size, step); step 0 for a fixed size.
    halo : dict
        Input axis name -> pixels of context each side (from the output's halo).
    channels : int or None
        Channels the input takes; None without a channel axis.
    """

    input_id: str
    output_id: str
    input_dims: tuple[str, ...]
    output_dims: tuple[str, ...]
    input_letters: str
    output_letters: str
    sizes: dict[str, tuple[int, int]]
    halo: dict[str, int]
    channels: int | None

    @property
    def axes(self) -> str:
        """The input's axes as nahual sends them: the package's order without the batch."""
        return self.input_letters.replace("b", "")

    def padded_size(self, axis: str, size: int) -> int:
        """The size the model takes along ``axis`` for a tile of ``size`` plus its halo each side.

        Raises
        ------
        ContractError
            When the package takes a fixed size smaller than that.
        """
        return valid_size(self.sizes[axis], size + 2 * self.halo.get(axis, 0), axis)


def valid_size(spec: tuple[int, int], wanted: int, axis: str) -> int:
    """The smallest size of ``min + n * step`` (or the fixed size, step 0) that is at least ``wanted``.

    Raises
    ------
    ContractError
        When a fixed size is smaller than ``wanted``.
    """
    least, step = spec
    if step == 0:
        if wanted > least:
            raise ContractError(
                f"the package takes {axis}={least} exactly, but a tile and its halo need {wanted}: "
                f"choose a tile of at most {least} minus twice the halo along {axis}"
            )
        return least
    return least + step * max(0, math.ceil((wanted - least) / step))


def _letter(axis: Any) -> str:
    """nahual's name of a package axis: ``b``, ``c``, ``t``, or the space axis ``z``/``y``/``x``.

    Raises
    ------
    ContractError
        For index axes and space axes named other than z, y or x.
    """
    kind = axis.type
    if kind in ("batch", "channel", "time"):
        return {"batch": "b", "channel": "c", "time": "t"}[kind]
    if kind == "space" and str(axis.id).lower() in ("z", "y", "x"):
        return str(axis.id).lower()
    raise ContractError(
        f"the package has a {kind} axis {str(axis.id)!r}; nahual maps only batch, channel, time and z/y/x"
    )


def _input_size(axis: Any) -> tuple[int, int]:
    """(least size, step) of an input axis: fixed sizes have step 0."""
    from bioimageio.spec.model import v0_5

    size = axis.size
    if isinstance(size, int):
        return size, 0
    if isinstance(size, v0_5.ParameterizedSize):
        return size.min, size.step
    raise ContractError(
        f"input axis {str(axis.id)!r} takes its size from another tensor ({size}); nahual cannot tile it"
    )


def _check_on_grid(axis: Any, inputs: dict[str, Any], input_id: str) -> None:
    """Refuse an output axis that is not the input's, pixel for pixel (nahual writes outputs on the image's grid)."""
    from bioimageio.spec.model import v0_5

    size = axis.size
    reference = inputs.get(str(getattr(size, "axis_id", "")))
    same = (
        isinstance(size, v0_5.SizeReference)
        and str(size.tensor_id) == input_id
        and size.offset == 0
        and reference is not None
        and getattr(reference, "scale", 1.0) == getattr(axis, "scale", 1.0)
    )
    if not same:
        raise ContractError(
            f"output axis {str(axis.id)!r} is not the input's axis pixel for pixel (size {size}); "
            "nahual writes outputs on the image's grid"
        )


def read_layout(descr: Any, output: str | None) -> Layout:
    """The :class:`Layout` of a model description, for its output ``output`` (None: the first).

    Raises
    ------
    ContractError
        For more than one input, an unknown output, an axis nahual has no
        name for, or an output not on the input's grid.
    """
    if len(descr.inputs) != 1:
        raise ContractError(f"the package takes {len(descr.inputs)} input tensors; nahual sends one image")
    source = descr.inputs[0]
    outputs = {str(t.id): t for t in descr.outputs}
    if output is not None and output not in outputs:
        raise ContractError(f"the package has no output {output!r}; its outputs are {sorted(outputs)}")
    target = outputs[output] if output is not None else descr.outputs[0]
    inputs = {str(a.id): a for a in source.axes}
    sizes = {_letter(a): _input_size(a) for a in source.axes if a.type in ("space", "time")}
    halo, output_letters = {}, ""
    for axis in target.axes:
        if axis.type in ("space", "time"):
            _check_on_grid(axis, inputs, str(source.id))
            letter = _letter(inputs[str(axis.size.axis_id)])
            halo[letter] = int(getattr(axis, "halo", 0) or 0)
            output_letters += letter
        else:
            output_letters += _letter(axis)
    channel = next((a for a in source.axes if a.type == "channel"), None)
    return Layout(
        input_id=str(source.id),
        output_id=str(target.id),
        input_dims=tuple(str(a.id) for a in source.axes),
        output_dims=tuple(str(a.id) for a in target.axes),
        input_letters="".join(_letter(a) for a in source.axes),
        output_letters=output_letters,
        sizes=sizes,
        halo=halo,
        channels=None if channel is None else len(channel.channel_names),
    )


def tolerance(descr: Any, output_id: str, weights_format: str) -> dict[str, float]:
    """The relative and absolute tolerance the package declares for ``output_id`` run with ``weights_format``."""
    for entry in descr.config.bioimageio.reproducibility_tolerance:
        if (not entry.output_ids or output_id in map(str, entry.output_ids)) and (
            not entry.weights_formats or weights_format in entry.weights_formats
        ):
            return {"relative": float(entry.relative_tolerance), "absolute": float(entry.absolute_tolerance)}
    return dict(DEFAULT_TOLERANCE)


def about(descr: Any, path: Path, layout: Layout, weights_format: str) -> dict[str, Any]:
    """What a loaded package is, for ``info`` and every output's provenance (JSON values only)."""
    cite = [
        {key: str(value) for key, value in (("text", c.text), ("doi", c.doi), ("url", c.url)) if value}
        for c in descr.cite
    ]
    return {
        "name": descr.name,
        "id": str(descr.id) if descr.id else None,
        "version": str(descr.version) if descr.version else None,
        "license": str(descr.license) if descr.license else None,
        "authors": [a.name for a in descr.authors],
        "cite": cite,
        "source": str(path),
        "weights_format": weights_format,
        "output": layout.output_id,
        "tolerance": tolerance(descr, layout.output_id, weights_format),
    }
