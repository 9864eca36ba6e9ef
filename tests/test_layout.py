"""The package's shape: who may import whom, and where printing and exiting live.

Each subpackage's ``__init__`` docstring says what it may import; this test
holds the code to it, so the architecture in the folder tree stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchvid"

#: The shared vocabulary, importable from anywhere.
SHARED = {"errors", "catalogue", "states", "request", "text", "threads", "video"}
#: What each part of batchvid may import, besides the shared vocabulary and itself.
ALLOWED: dict[str, set[str]] = {
    "shared": set(),
    "outputs": set(),
    "manifest": {"outputs"},
    "ledger": set(),
    "remote": set(),
    "media": set(),
    "sim": {"media"},
    "report": {"ledger"},
    "run": {"manifest", "ledger", "remote", "media", "sim", "outputs"},
    "cli": {"manifest", "ledger", "remote", "run", "report", "sim", "outputs"},
}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else "shared"


def batchvid_imports(path: Path) -> set[str]:
    """The parts of batchvid a module imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = path.relative_to(PACKAGE).parent.parts
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - (node.level - 1)] if node.level > 1 else here)
                parts = base + (node.module.split(".") if node.module else [])
                names = parts or [alias.name for alias in node.names]
            elif node.module and node.module.startswith("batchvid."):
                names = node.module.split(".")[1:]
            else:
                continue
            found.add(names[0] if names else "shared")
    # ``from .. import __version__``: the package itself, shared by all.
    return {"shared" if name in SHARED or name.startswith("__") else name for name in found}


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_part_imports_only_what_its_docstring_allows(path: Path) -> None:
    part = part_of(path)
    if path.parent == PACKAGE and path.name == "__init__.py":
        return  # the public API re-exports every part
    allowed = ALLOWED[part] | {part, "shared"}
    assert batchvid_imports(path) <= allowed, (part, batchvid_imports(path) - allowed)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_cli_prints_exits_or_imports_click(path: Path) -> None:
    if part_of(path) == "cli":
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("print", "exit"), f"{path.name}:{node.lineno}"
        if isinstance(node, ast.Attribute) and node.attr == "exit":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), path.name
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] in ("click", "rich") for n in names), path.name


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_classes_and_functions_stay_readable(path: Path) -> None:
    """No module over 600 lines, no class over 300, no function over 80 (STYLE.md)."""
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 600, path.name
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = 300 if isinstance(node, ast.ClassDef) else 80
            assert size <= limit, f"{path.name}: {node.name} is {size} lines"


def test_every_subpackage_says_what_it_owns_and_may_import() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "Owns:" in doc and "May import:" in doc, init.parent.name
