"""Names the parser offers, known without importing the library.

The method registry (``toma_export.methods``, behind ``toma_export.config.METHODS``) imports torch,
so the command line keeps its own copy of the method names to build its parser fast;
``tests/test_cli.py`` asserts it equals ``toma_export.config.METHODS``, so a new method fails that
test until it is named here too.
"""

from __future__ import annotations

METHODS: tuple[str, ...] = ("toma", "tomesd", "todo", "catome", "none")
