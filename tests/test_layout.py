"""The house by concern (issue 26): no import cycle among ltbench's modules, and no module over about 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: modules allowed past MAX_LINES, each with the reason
LONG_MODULES: dict[str, str] = {
    "ltbench.grid.runner": "one run from plan to record: its guard must hold training and recording in one place",
    "ltbench.results.records": "the record's fields and the code identity they state; split when either grows",
    "ltbench.results.submit": "every check a submitted record passes, in the order the command reports them",
}
MAX_LINES = 500


def module_names(root: Path, package: str = "ltbench") -> dict[str, Path]:
    out = {}
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``path`` imports when its code runs: at module level and inside functions alike
    (a lazy import is still an edge); only ``if TYPE_CHECKING:`` blocks, never executed, are left out."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in modules:
                found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a path that returns to its start ([] when there is none)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return []


def import_graph(root: Path, package: str = "ltbench") -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_no_module_of_ltbench_imports_itself_back_at_run_time():
    graph = import_graph(ROOT)
    assert len(graph) > 40 and "ltbench.training.loop" in graph
    assert find_cycle(graph) == []


def test_the_cycle_check_finds_a_lazy_import_cycle_and_ignores_type_checking_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) == []
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")  # lazy, but it runs
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_no_module_is_over_about_500_lines_unless_it_says_why():
    long = {name: len(path.read_text().splitlines()) for name, path in module_names(ROOT).items()
            if len(path.read_text().splitlines()) > MAX_LINES}
    assert set(long) <= set(LONG_MODULES), long


def test_the_core_is_grouped_by_concern_and_the_cli_only_parses_and_dispatches():
    packages = {name for name, path in module_names(ROOT).items() if path.name == "__init__.py"}
    assert {"ltbench.data", "ltbench.training", "ltbench.results", "ltbench.plugins", "ltbench.grid"} <= packages
    top = {name for name, path in module_names(ROOT).items() if name.count(".") == 1 and path.name != "__init__.py"}
    # ltbench.testing: the kit's former path, a deprecated alias for one minor version (the API's policy)
    assert top == {"ltbench.__main__", "ltbench.api", "ltbench.cli", "ltbench.errors", "ltbench.hookspecs",
                   "ltbench.testing"}
    cli = (ROOT / "ltbench" / "cli.py").read_text()
    for decision in ("torch.distributed.run", "run_parallel(", "launch.submit(", "plan_grid("):
        assert decision not in cli, f"ltbench/cli.py decides how to run ({decision}); that belongs in ltbench.grid"
