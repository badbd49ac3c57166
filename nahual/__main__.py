"""``python -m nahual`` is the ``nahual`` command."""

from .cli import main

raise SystemExit(main())
