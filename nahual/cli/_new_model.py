"""CLI layer: ``nahual new-model NAME`` writes a model and the uv environment it is served from.

The folder ``DIR/NAME`` (``envs/NAME`` by default) gets a uv project whose
``pyproject.toml`` depends on nahual by a *relative* path to the checkout
(PyPI's ``nahual`` is an unrelated project, and an absolute path breaks on
the next machine), registers the model under the ``nahual.models`` entry
point so that ``--preload NAME`` finds it, and ships a working example: a
labels model with one parameter, its ``ModelTests`` contract test and a
README. ``uv sync`` (or the first ``nahual serve --env uv:DIR/NAME``) builds
the environment.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "write_model_env"]

#: Names a model may have: they become a module name, a class name and a registry name.
NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
#: Names the model module imports: a model class may not take them.
TAKEN = frozenset({"Any", "Contract", "Model", "Param"})

PYPROJECT = """\
# The environment of the {name!r} model server (written by `nahual new-model {name}`).
#   uv sync --project {folder}                    # or let the first start sync it
#   nahual serve ipc:///tmp/{name}.sock --env uv:{folder} --preload {name}
[project]
name = "nahual-model-{name}"
version = "0.1.0"
description = "nahual server with the {name} model"
requires-python = ">=3.11"
dependencies = [
    "nahual",
    "numpy>=1.26",
    "scipy>=1.11",
]

# How the server finds the model by name: `--preload {name}`, `model: {name}` in config.yaml.
[project.entry-points."nahual.models"]
{name} = "{module}:{cls}"

[build-system]
requires = ["hatchling>=1.20"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
only-include = ["{module}.py"]

# nahual comes from its checkout, by a path relative to this folder (never from PyPI,
# where "nahual" is an unrelated project). Moved the folder? Fix this path.
[tool.uv.sources]
nahual = {{ path = "{nahual}", editable = true }}
"""

MODULE = '''\
"""The {name!r} model: objects are the connected pixels above a level. Replace it with yours.

Written by `nahual new-model {name}`. The server imports this module in its
own environment ({folder}); keep heavy imports (torch, your package, weights)
in ``load``, so that listing the model (`nahual models`) stays fast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nahual import Contract, Model, Param


class {cls}(Model):
    """Label the connected regions of a 2-d or 3-d image that are brighter than ``level``."""

    name = "{name}"
    packages = ("scipy", "numpy")  # versions that `info` reports
    contract = Contract(axes=("yx", "zyx"), inputs=("image",), dtype="float32", output="labels")
    param_spec = (Param("level", 0.5, "pixels above it are objects"),)

    def load(self, **params: Any) -> None:
        """Check the load params, then import what ``process`` needs (once per instance)."""
        super().load(**params)  # checks params, keeps self.params
        from scipy import ndimage

        self.ndimage = ndimage

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, np.ndarray]:
        """Label one image (or tile); ``params`` override the load params for this call."""
        p = self.merge_params(params, self.params)  # per-call overrides, checked
        arrays, _axes = self.contract.read_payload(payload)  # checks keys and axes
        labels, _count = self.ndimage.label(arrays["image"] > p["level"])
        return {{"labels": labels.astype(np.uint32)}}
'''

TEST = '''\
"""The contract every nahual model passes, for {name!r}: `uv run --project {folder} --with pytest pytest {folder}`."""

from __future__ import annotations

import numpy as np
from {module} import {cls}

from nahual.testing import ModelTests


class Test{cls}(ModelTests):
    model_class = {cls}
    load_params = {{"level": 0.5}}

    def make_payload(self) -> dict:
        return {{"image": np.random.default_rng(0).random((32, 32), np.float32), "axes": "yx"}}

    def test_bright_squares_are_two_objects(self) -> None:
        image = np.zeros((16, 16), np.float32)
        image[2:5, 2:5] = image[9:13, 9:13] = 1.0
        model = {cls}()
        model.load()
        labels = model.process({{"image": image, "axes": "yx"}})["labels"]
        assert labels.max() == 2 and (labels > 0).sum() == 9 + 16
'''

README = """\
# {name}: a nahual model in its own environment

Written by `nahual new-model {name}`; see nahual's docs/your-own-model.md.

- `{module}.py`: the model (a `nahual.Model` subclass); `test_{module}.py`: its contract test.
- `pyproject.toml`: the environment (nahual from its checkout at `{nahual}`, plus the model's packages).

```sh
uv sync --project {folder}                          # build .venv (the first `--env uv:{folder}` start does it too)
uv run --project {folder} --with pytest pytest {folder}   # the model passes nahual's ModelTests
nahual serve ipc:///tmp/{name}.sock --env uv:{folder} --preload {name} --params '{{"level": 0.5}}'
```
"""


def register(subparsers: Any) -> None:
    """Add ``new-model``."""
    parser = subparsers.add_parser(
        "new-model",
        help="write a model and the uv environment that serves it (DIR/NAME)",
        description="Write DIR/NAME (default envs/NAME): pyproject.toml (a uv project that depends on nahual by a "
        "relative path to its checkout and registers the model under the nahual.models entry point), "
        "NAME_model.py (a working labels model with one param), its ModelTests test and a README.",
    )
    parser.add_argument("name", metavar="NAME", help="model name: lower-case letters, digits, - and _")
    parser.add_argument("--dir", default="envs", help="folder that gets NAME/ (default envs)")
    parser.add_argument(
        "--nahual",
        metavar="CHECKOUT",
        help="the nahual checkout to depend on (default: the one this nahual runs from)",
    )
    parser.set_defaults(run=run_new_model)


def find_checkout() -> Path | None:
    """The nahual checkout this nahual runs from (an editable install), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name = "nahual"$', pyproject.read_text()):
        return root
    return None


def write_model_env(name: str, directory: Path, checkout: Path) -> list[Path]:
    """Write the environment folder ``directory/name`` for a new model.

    Parameters
    ----------
    name : str
        The model's registry name (``NAME`` above).
    directory : Path
        The folder that gets ``name/``.
    checkout : Path
        The nahual checkout the environment depends on (written as a path relative to the folder).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    ConfigError
        For a name that is not a lower-case identifier, an existing folder, or a checkout that is not one.
    """
    from ..errors import ConfigError

    if not NAME.match(name):
        raise ConfigError(f"model name must be lower-case letters, digits, '-' and '_' (a letter first), got {name!r}")
    if not (checkout / "pyproject.toml").is_file() or not (checkout / "nahual").is_dir():
        raise ConfigError(f"--nahual must be a nahual checkout (pyproject.toml and nahual/), got {checkout}")
    folder = directory / name
    if folder.exists():
        raise ConfigError(f"expected a new folder for model {name!r}, found {folder} already there")
    identifier = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in identifier.split("_") if part)
    fields = {
        "name": name,
        "module": f"{identifier}_model",
        "cls": f"{cls}Model" if cls in TAKEN else cls,
        "folder": os.path.relpath(folder),
        "nahual": os.path.relpath(checkout.absolute(), folder.absolute()),
    }
    texts = {
        "pyproject.toml": PYPROJECT,
        f"{fields['module']}.py": MODULE,
        f"test_{fields['module']}.py": TEST,
        "README.md": README,
    }
    folder.mkdir(parents=True)
    written = []
    for filename, template in texts.items():
        path = folder / filename
        path.write_text(template.format(**fields))
        written.append(path)
    return written


def run_new_model(args: argparse.Namespace) -> int:
    """Write the folder, then say what to do next (and how to point at nahual from outside a checkout)."""
    from ..errors import ConfigError

    checkout = Path(args.nahual) if args.nahual else find_checkout()
    if checkout is None:
        raise ConfigError(
            "expected nahual to run from its checkout (an editable install), found an installed package; "
            "give --nahual PATH_TO_CHECKOUT"
        )
    directory = Path(args.dir)
    written = write_model_env(args.name, directory, checkout)
    folder = os.path.relpath(directory / args.name)
    print(f"wrote {', '.join(os.path.relpath(path) for path in written)}")
    inside = (directory / args.name).resolve().is_relative_to(checkout.resolve())
    if not inside:
        print(
            f"note: {folder} is outside the nahual checkout {checkout}; its pyproject.toml points at it by the "
            "relative path in [tool.uv.sources] (fix that path if you move either)",
            file=sys.stderr,
        )
    print(f"next: edit {folder}/{args.name.replace('-', '_')}_model.py, then")
    print(f"  nahual env-prepare uv:{folder}")
    print(f"  nahual serve ipc:///tmp/{args.name}.sock --env uv:{folder} --preload {args.name}")
    return 0
