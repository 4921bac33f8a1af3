"""``python -m scorefn``: the ``scorefn`` command."""

from scorefn.cli import main

raise SystemExit(main())
