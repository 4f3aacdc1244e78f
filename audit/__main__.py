"""``python -m audit`` is the ``vision-audit`` command."""

from audit.cli import main

raise SystemExit(main())
