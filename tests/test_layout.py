"""Package layout: every source folder is a package, and imports between layers run one way.

- ``toma_export`` may import ``plugins``; ``plugins`` imports only the leaf modules
  ``toma_export.core`` and ``toma_export.errors``.
- The library never imports the command line (``toma_export.cli``); the command line sits on top.
- No module is named after a library it would shadow (``tensorrt``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("toma_export", "plugins")
PLUGINS_MAY_IMPORT = ("toma_export.core", "toma_export.errors")


def _imports(path: Path) -> set[str]:
    """Every absolute module an ``import`` / ``from ... import`` in ``path`` names, at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_every_source_folder_is_a_package() -> None:
    missing = []
    for top in PACKAGES:
        for folder in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir())]:
            if "__pycache__" in folder.parts or not any(folder.glob("*.py")):
                continue
            if not (folder / "__init__.py").is_file():
                missing.append(str(folder.relative_to(ROOT)))
    assert not missing, f"folders with Python files but no __init__.py: {missing}"


def test_plugins_import_only_leaf_modules_of_toma_export() -> None:
    bad = {}
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        wrong = sorted(n for n in _imports(path) if _within(n, ("toma_export",)) and not _within(n, PLUGINS_MAY_IMPORT))
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    assert not bad, f"plugins may import only {PLUGINS_MAY_IMPORT} from toma_export: {bad}"


def test_leaf_modules_do_not_import_plugins() -> None:
    leaves = [ROOT / "toma_export" / "errors.py", *sorted((ROOT / "toma_export" / "core").rglob("*.py"))]
    bad = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if _within(n, ("plugins",))) for p in leaves}
    assert not any(bad.values()), bad


def test_library_does_not_import_the_cli() -> None:
    cli = ROOT / "toma_export" / "cli"
    bad = {}
    for path in sorted((ROOT / "toma_export").rglob("*.py")):
        if cli in path.parents:
            continue
        wrong = sorted(n for n in _imports(path) if _within(n, ("toma_export.cli",)))
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    assert not bad, bad


def test_no_module_shadows_tensorrt() -> None:
    shadows = [p for top in PACKAGES for p in (ROOT / top).rglob("tensorrt*") if p.stem == "tensorrt"]
    assert not shadows, shadows
