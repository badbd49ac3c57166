"""``python -m nahual`` is the ``nahual`` command.

``python -m`` puts the working directory first on ``sys.path``: a server
started in a directory that others can write to would import their modules
(named like one a model imports) as its own user. It is dropped here, before
any model is imported; nahual starts its own servers with ``python -P``, which
never adds it, so that not even ``nahual`` itself can be shadowed.
"""

import os
import sys

if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from .cli import main  # after the import path is safe

raise SystemExit(main())
