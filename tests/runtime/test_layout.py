"""The house rules of `runtime/` (docs/design.md §3), checked on the source: no import cycle between its modules, no
torch/transformers/onnx import anywhere in it, no module that has grown into several jobs; and every design
reference in the code resolves."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import runtime

ROOT = Path(runtime.__file__).parent
HEAVY = ("torch", "transformers", "onnx", "onnx_graphsurgeon", "onnxruntime.quantization")
MAX_LINES = 400  # ~350 is the aim (docs/design.md §3); past this a module is split along its seam


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """Modules imported when `path` is imported: module level, outside `if TYPE_CHECKING:` (lazy imports in
    functions do not make cycles at import time)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in top_level_imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for other in sorted(edges[name]):
            if state.get(other) == 1:
                return [*path[path.index(other) :], other]
            if other not in state and (cycle := visit(other, [*path, other])):
                return cycle
        state[name] = 2
        return None

    for name in sorted(edges):
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return None


def test_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_runtime_imports_nothing_heavy() -> None:
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            heavy = [n for n in names if n.split(".")[0] in HEAVY or n in HEAVY]
            assert not heavy, f"{path.relative_to(ROOT.parent)} imports {heavy}"


def test_no_module_past_the_limit() -> None:
    long = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_every_design_reference_resolves() -> None:
    """Code comments cite `docs/design.md §n`: each section they name exists in the repository's design."""
    repo = ROOT.parent
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", (repo / "docs/design.md").read_text(), re.M))
    cited = {(path.relative_to(repo), number.rstrip("."))
             for package in ("runtime", "build_engines", "calibration", "tests")
             for path in (repo / package).rglob("*.py")
             for number in re.findall(r"docs/design\.md §(\d+(?:\.\d+)?)", path.read_text())}
    assert cited and not {(p, n) for p, n in cited if n not in headings}, sorted(headings)
