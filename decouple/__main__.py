"""``python -m decouple``: the command line (see :mod:`decouple.cli`)."""

from .cli import main

raise SystemExit(main())
