"""The house rules that keep oauthmail's rooms apart, checked on the source (plain ``ast``).

* no import circles among product modules (imports under ``if TYPE_CHECKING:``
  are for type checkers and do not count);
* the arrows: ``imap/`` and ``smtp/`` never import each other, ``tokens/``
  nothing from ``web/``, ``config`` nothing from ``smtp/``, ``imap/``,
  ``tokens/`` or ``web/``; product code never imports ``oauthmail.testing``;
  ``sasl`` imports nothing from Twisted;
* only ``db/`` talks to sqlite3; no product module over 600 lines;
* no private Twisted name (module, attribute or method) is used: a Twisted
  release must not be able to break mail. Should one ever be needed, it goes
  in :data:`ALLOWED_PRIVATE_TWISTED` with the reason, and pyproject.toml bounds
  the Twisted version.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

import twisted

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "oauthmail"

#: ``(module, name)`` pairs of Twisted private names product code may use, with why. None.
ALLOWED_PRIVATE_TWISTED: dict[tuple[str, str], str] = {}

#: ``(from room, to room)`` imports that must not exist.
FORBIDDEN_ARROWS = {
    ("imap", "smtp"),
    ("smtp", "imap"),
    ("tokens", "web"),
    ("config", "smtp"),
    ("config", "imap"),
    ("config", "tokens"),
    ("config", "web"),
}

MAX_LINES = 600


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The product module ``name`` (or the package holding it) refers to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _runtimeNodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text())


def _imports(module: str) -> set[str]:
    """The product modules ``module`` imports at run time (top level or in functions)."""
    path = MODULES[module]
    found: set[str | None] = set()
    for node in _runtimeNodes(_tree(module)):
        if isinstance(node, ast.Import):
            found.update(_resolve(a.name) for a in node.names if a.name.startswith("oauthmail"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("oauthmail"):
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                found.add(_resolve(full) if full in MODULES else _resolve(source))
    found.discard(None)
    found.discard(module)
    return {m for m in found if m is not None}


GRAPH = {module: _imports(module) for module in MODULES}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        onStack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in onStack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                onStack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_theGraphIsSeen() -> None:
    """The scan finds the modules and their imports (a broken scan must not pass by seeing none)."""
    assert len(MODULES) > 100
    assert "oauthmail.health" in GRAPH["oauthmail.service"]


def test_noImportCircles() -> None:
    """No two product modules need each other, however indirectly."""
    assert _cycles() == []


def test_theArrowsRunOneWay() -> None:
    """imap/ and smtp/ stay apart, tokens/ knows no page, config holds values only."""
    wrong = sorted(
        (module, target)
        for module, targets in GRAPH.items()
        for target in targets
        if (_room(module), _room(target)) in FORBIDDEN_ARROWS
    )
    assert wrong == []


def test_productCodeNeverImportsTheTestingKit() -> None:
    """oauthmail.testing serves tests and demos; nothing the daemon runs depends on it."""
    wrong = sorted(
        (module, target)
        for module, targets in GRAPH.items()
        if _room(module) != "testing"
        for target in targets
        if _room(target) == "testing"
    )
    assert wrong == []


def test_saslIsPure() -> None:
    """The SASL encoders import nothing from Twisted (wire format only, property-tested)."""
    names = {
        a.name
        for node in ast.walk(_tree("oauthmail.sasl"))
        if isinstance(node, ast.Import)
        for a in node.names
    } | {
        node.module or ""
        for node in ast.walk(_tree("oauthmail.sasl"))
        if isinstance(node, ast.ImportFrom)
    }
    assert not [n for n in names if n.split(".")[0] == "twisted"]


def test_onlyTheDatabaseLayerTalksSQLite() -> None:
    """sqlite3 appears only under oauthmail/db/ (every stored thing is behind an interface)."""
    users = sorted(
        module
        for module, path in MODULES.items()
        if _room(module) != "db"
        and ("import sqlite3" in path.read_text() or "sqlite3." in path.read_text())
    )
    assert users == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_noModuleIsTooLong(module: str) -> None:
    """A module over 600 lines holds several jobs: split it along them."""
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


@functools.cache
def _twistedPrivateNames() -> frozenset[str]:
    """Underscore names Twisted defines: its private methods, classes and attributes."""
    names: set[str] = set()
    for path in Path(twisted.__file__).parent.rglob("*.py"):
        if "/test/" in str(path):
            continue
        try:
            tree = ast.parse(path.read_text())
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return frozenset(n for n in names if n.startswith("_") and not n.startswith("__"))


def _ourNames() -> set[str]:
    """Underscore names oauthmail defines itself (its own objects may use them)."""
    names: set[str] = set()
    for module in MODULES:
        for node in ast.walk(_tree(module)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def test_noPrivateTwistedNames() -> None:
    """No private Twisted module, name or attribute is used (see ALLOWED_PRIVATE_TWISTED)."""
    private = _twistedPrivateNames() - _ourNames()
    used: set[tuple[str, str]] = set()
    for module in MODULES:
        for node in ast.walk(_tree(module)):
            if isinstance(node, ast.Attribute) and node.attr in private:
                used.add((module, node.attr))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                if any(part.startswith("_") for part in (node.module or "").split(".")):
                    used.add((module, node.module or ""))
                used.update((module, a.name) for a in node.names if a.name.startswith("_"))
            elif isinstance(node, ast.Import):
                used.update(
                    (module, a.name)
                    for a in node.names
                    if a.name.startswith("twisted")
                    and any(p.startswith("_") for p in a.name.split("."))
                )
    assert sorted(used - set(ALLOWED_PRIVATE_TWISTED)) == []
