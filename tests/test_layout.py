"""Package layout: every source folder is a package, and imports between layers run one way.

- ``toma_export`` may import ``plugins``; ``plugins`` imports only the leaf modules
  ``toma_export.core`` and ``toma_export.errors``.
- The library never imports the command line (``toma_export.cli``); the command line sits on top.
- The method capability table (``toma_export.methods``) never imports the eager code (the mergers live
  there, ``eager/mergers.py``), and the graph pass never imports engines or eager code, nor names
  artifacts (manifests are engine-side).
- The model records (``toma_export.models``: specs, configs, example inputs) import only leaf modules
  (``errors``, ``quiet``) from the rest of the library; scripts construct no diffusers model classes
  (model configs live in ``toma_export/models``, e.g. the trial table ``trial_configs.py``).
- Module-level imports between ``toma_export`` modules (``TYPE_CHECKING`` ones included) form no circle.
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


def _forbidden(folder: str, banned: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        wrong = sorted(n for n in _imports(path) if _within(n, banned))
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    return bad


def test_methods_do_not_import_eager_code() -> None:
    bad = _forbidden("toma_export/methods", ("toma_export.eager",))
    assert not bad, f"the method table is torch-free; eager code (mergers) imports it, not the reverse: {bad}"


def test_graph_does_not_import_engines_or_eager() -> None:
    bad = _forbidden("toma_export/graph", ("toma_export.engines", "toma_export.eager"))
    assert not bad, f"the graph pass sits below the engines and the eager hooks: {bad}"


def test_models_import_only_leaf_modules() -> None:
    allowed = ("toma_export.models", "toma_export.errors", "toma_export.quiet")
    bad = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if _within(n, ("toma_export",)) and not _within(n, allowed))
           for p in sorted((ROOT / "toma_export" / "models").rglob("*.py"))}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"the model records sit below every other layer (they may import {allowed}): {bad}"


def test_scripts_construct_no_diffusers_models() -> None:
    """A model config in a script is a table beside ``toma_export/models``; scripts read that table instead."""
    bad = {}
    for path in sorted((ROOT / "scripts").glob("*.py")):
        names = [n for n in _imports(path) if n.startswith("diffusers.") and n.endswith("Model")]
        if names:
            bad[str(path.relative_to(ROOT))] = sorted(names)
    assert not bad, f"scripts that build their own diffusers models (move the configs to toma_export/models): {bad}"


def test_graph_knows_no_artifacts() -> None:
    """Artifacts (manifests, their formatting) are engine-side: the graph pass neither imports nor names them."""
    named = {str(p.relative_to(ROOT)): [w for w in ("manifest", "format_artifact", "read_manifest") if w in p.read_text()]
             for p in sorted((ROOT / "toma_export" / "graph").rglob("*.py"))}
    assert not any(named.values()), {k: v for k, v in named.items() if v}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The ``toma_export`` modules ``path`` imports at module level (in ``if``/``try`` blocks too,
    ``if TYPE_CHECKING:`` included): ``from pkg import name`` counts as ``pkg.name`` when that is a module."""
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names)

    visit(ast.parse(path.read_text(), str(path)).body)
    return out & modules


def test_module_imports_form_no_circle() -> None:
    paths = {_module_name(p): p for p in sorted((ROOT / "toma_export").rglob("*.py"))}
    graph = {m: sorted(_module_level_imports(p, set(paths))) for m, p in paths.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    circles: list[list[str]] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                circles.append(path[path.index(n):] + [n])
            elif n not in state:
                walk(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_no_module_shadows_tensorrt() -> None:
    shadows = [p for top in PACKAGES for p in (ROOT / top).rglob("tensorrt*") if p.stem == "tensorrt"]
    assert not shadows, shadows
