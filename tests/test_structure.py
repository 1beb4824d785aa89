"""The package's structure: no import cycle between npuq's modules, counting every import statement (at
module level and inside functions), so that a module can always be imported on its own and a lazy import
cannot hide a dependency that runs both ways."""

from __future__ import annotations

import ast
from pathlib import Path

import npuq

PACKAGE = Path(npuq.__file__).resolve().parent
NATIVE = {"npuq._C"}  # compiled modules: they import nothing of npuq


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's __init__)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["npuq", *path.relative_to(PACKAGE).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _target(name: str, modules) -> str | None:
    """The module an import of ``name`` executes last: the longest known prefix."""
    while name and name not in modules and name not in NATIVE:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, (path, is_package) in modules.items():
        package = module if is_package else module.rpartition(".")[0]
        stack = [ast.parse(path.read_text(encoding="utf-8"), str(path))]
        while stack:
            for node in ast.iter_child_nodes(stack.pop()):
                if _type_checking_only(node):
                    continue
                stack.append(node)
                targets = []
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        parts = package.split(".")
                        parts = parts[: len(parts) - (node.level - 1)]
                        base = ".".join(parts + ([node.module] if node.module else []))
                    # "from a import b" imports the module a.b when there is one, else a name of a
                    targets = [
                        f"{base}.{a.name}" if f"{base}.{a.name}" in modules | dict.fromkeys(NATIVE) else base
                        for a in node.names
                    ]
                for name in targets:
                    if name == "npuq" or name.startswith("npuq."):
                        target = _target(name, modules)
                        if target and target != module and target not in NATIVE:
                            graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return found


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (each line: modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_lazy_imports():
    graph = import_graph()
    # the command modules import their subsystems inside the command functions (so that --help stays light);
    # the graph must still hold those edges
    assert "npuq.apps.ptq_benchmark" in graph["npuq.apps.commands"]
    assert "npuq.registry" in graph and not graph["npuq.registry"], "the registry module must import nothing of npuq"
