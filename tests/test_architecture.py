"""The README's Architecture tree names every package and module, and ``licsearch/`` has no import cycle.

The tree is the fenced block under ``## Architecture``: one entry per line, two spaces of indent per folder level,
a folder ends with ``/``. Every ``.py`` file under ``licsearch/``, ``handlers/`` and ``export/`` (``__init__.py``
aside: its folder's line stands for it) must be listed, and every listed folder and module must exist.

Import cycles are found on the graph of imports between ``licsearch`` modules, read with :mod:`ast` (relative
imports resolved against the importing module's package). Imports inside functions count: a lazy import is
still a dependency, and two modules that import each other lazily are one concept split in two. Imports under
``if TYPE_CHECKING:`` do not count: they never run and only name types for annotations.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "licsearch"
TREE_ROOTS = ("licsearch", "handlers", "export")


def readme_tree() -> list[str]:
    """The paths the Architecture block lists (folders with a trailing ``/``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Architecture\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert section, "README.md has no '## Architecture' section"
    block = re.search(r"^```\n(.*?)^```", section.group(1), flags=re.M | re.S)
    assert block, "the Architecture section has no fenced tree"
    paths: list[str] = []
    stack: list[str] = []
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"odd indent in the Architecture tree: {line!r}"
        depth = indent // 2
        assert depth <= len(stack), f"the Architecture tree skips a level at {line!r}"
        name = line.split()[0]
        stack[depth:] = []
        paths.append("".join(stack) + name)
        if name.endswith("/"):
            stack.append(name)
    return paths


def modules_on_disk() -> tuple[set[str], set[str]]:
    """(``.py`` files except ``__init__.py``, folders holding ``.py`` files) under the tree's roots."""
    files, folders = set(), set()
    for top in TREE_ROOTS:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts:
                continue
            folders.add(rel.parent.as_posix() + "/")
            if path.name != "__init__.py":
                files.add(rel.as_posix())
    return files, folders


def test_readme_tree_lists_every_module_and_nothing_absent() -> None:
    listed = readme_tree()
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({p for p in listed if listed.count(p) > 1})}"
    files, folders = modules_on_disk()
    missing = sorted((files | folders) - set(listed))
    assert not missing, f"add these to the README's Architecture tree (one line each): {missing}"
    gone = sorted(p for p in listed if not (ROOT / p).exists())
    assert not gone, f"the README's Architecture tree lists what does not exist: {gone}"
    stray = sorted(p for p in listed if p.endswith(".py") and p.split("/")[0] not in TREE_ROOTS)
    assert not stray, f"modules listed outside {TREE_ROOTS}: {stray}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, at any depth, outside ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif _is_type_checking(child):
            assert isinstance(child, ast.If)
            for stmt in child.orelse:
                yield from _runtime_imports(ast.Module(body=[stmt], type_ignores=[]))
        else:
            yield from _runtime_imports(child)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The ``licsearch`` modules that the module at ``path`` imports when it runs."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    known = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, known) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan 1972), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_import_graph_is_read_from_real_imports() -> None:
    graph = import_graph()
    assert "licsearch.cli.main" in graph and "licsearch.errors" in graph["licsearch.cli.main"]
    assert "licsearch.cli.store" in graph["licsearch.cli.main"], "a package-relative `from . import x` is an edge"
    assert "licsearch.spaces" in graph["licsearch.config"], "a module-level relative import is an edge"
    assert "licsearch.config" not in graph["licsearch.spaces"], "an import under TYPE_CHECKING is not"
    assert "licsearch.ops.ingest" in graph["licsearch.cli.images"], "an import inside a function is an edge"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_inside_licsearch() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles (a module imports, directly or not, one that imports it back): {found}"


def test_no_command_module_imports_a_private_name_of_another() -> None:
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"cli/{path.name} imports private {private} from cli/{node.module}.py"


def layer_table() -> dict[str, tuple[int, int]]:
    """CONTRIBUTING.md's layer table: each top-level module or package of ``licsearch`` -> (row, place in its row).

    Within a row, names after ``then`` come later (``model/``, then ``bundle/``); ``(what it holds)`` notes and
    names outside ``licsearch/`` (``handlers/``, ``export/``) are ignored.
    """
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    ranks: dict[str, tuple[int, int]] = {}
    for row, line in enumerate(rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        if set(cells[0]) <= {"-"}:
            continue
        modules = re.sub(r"\([^)]*\)", "", cells[1])
        for place, part in enumerate(modules.split("then")):
            for name in re.findall(r"`([^`]+)`", part):
                ranks[name.rstrip("/")] = (row, place)
    return ranks


def test_every_import_respects_the_layer_table() -> None:
    ranks = layer_table()
    assert ranks["errors"] < ranks["model"] < ranks["bundle"] < ranks["storage"] < ranks["cli"], "table misread"

    def rank(module: str) -> tuple[int, int] | None:
        top = module.split(".")[1] if "." in module else "errors"  # the package's own __init__ is core
        return ranks.get(top)

    graph = import_graph()
    unplaced = sorted({m.split(".")[1] for m in graph if "." in m and rank(m) is None})
    assert not unplaced, f"give these a row in CONTRIBUTING.md's layer table: {unplaced}"
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if rank(d) > rank(m))  # type: ignore[operator]
    assert not upward, f"imports from a layer above (see CONTRIBUTING.md's layer table): {upward}"
    assert not graph["licsearch.errors"] and not graph["licsearch.defaults"], (
        "errors and defaults import nothing of ours"
    )
