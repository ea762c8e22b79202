"""The package's shape, checked statically (no imports run): only the entry points and `tools/`
import Ray, the modules have no import cycle (lazy in-function imports count: a lazy import that
closes a circle still ties the two modules together), and the README's layout and
docs/architecture.md name every top-level module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "himac_ray"
RAY_ALLOWED = ("himac_ray.cli", "himac_ray.train", "himac_ray.tools")
"""entry points and CLI-only tools; everything else must run where Ray is not installed"""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST) -> list[str]:
    """Dotted names a module imports, lazy (in-function) imports included, `if TYPE_CHECKING:`
    blocks left out (`from a.b import c` gives `a.b.c` and `a.b`; `resolve` picks the module)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(ast.Module(body=[sub], type_ignores=[]))
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.extend(f"{child.module}.{alias.name}" for alias in child.names)
                found.append(child.module)
            visit(child)

    visit(tree)
    return found


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The himac_ray module an imported dotted name loads (longest known prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = {resolve(n, known) for n in imported_names(tree)}
        graph[name] = {t for t in targets if t is not None and t != name and t != "himac_ray"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_only_entry_points_and_tools_import_ray():
    offenders = []
    for name, path in modules().items():
        if name.startswith(RAY_ALLOWED):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for imported in imported_names(tree):
            top = imported.split(".")[0]
            if top in ("ray", "actors"):  # actors/ is the Ray layer
                offenders.append(f"{name} imports {imported}")
    assert not offenders, "Ray outside cli.py / train.py / tools/:\n" + "\n".join(sorted(set(offenders)))


def test_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_readme_layout_and_architecture_doc_list_every_top_level_module():
    expected = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    expected |= {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    listed = {line.split()[0] for line in layout.splitlines() if line.startswith("  ") and line.strip()}
    assert expected <= listed, f"README.md's Layout section does not list {sorted(expected - listed)}"
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    missing = sorted(name for name in expected if f"`{name}" not in architecture)
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_records_rollout_and_advantages_do_not_import_torch():
    code = ("import sys, himac_ray.data, himac_ray.advantage, himac_ray.rollout, himac_ray.coevolution; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
