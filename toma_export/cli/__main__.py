"""``python -m toma_export.cli``: the ``toma-export`` command."""

from toma_export.cli import main

raise SystemExit(main())
