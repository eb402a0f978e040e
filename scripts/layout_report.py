"""Print the package's size facts: the largest modules, the largest functions, and import cycles.

    python scripts/layout_report.py            # the summary
    python scripts/layout_report.py --top 15   # more rows

It reads the source with `ast` only (nothing is imported), so anyone can rerun it on any checkout.
An import cycle is a strongly connected group of ftlab modules that import each other. Two counts are
printed: at module level (what breaks an import), and with the imports inside functions too (a
lazy import still ties two modules together, so the goal is zero of those as well). A package's
lazy ``__init__`` (``ftlab/_lazy.py``) imports nothing up front and is left out of the graph.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ftlab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def functions(tree):
    """(qualified name, lines) for every def, methods included."""
    out = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
    walk(tree, "")
    return out


def imported_modules(tree, name, modules, lazy=False):
    """ftlab modules that ``name`` imports: at module level, or anywhere (``lazy=True``: inside functions too)."""
    found = set()
    package = name if name in modules and modules[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in (ast.walk(tree) if lazy else tree.body):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            if t in modules and t != name:
                found.add(t)
    return found


def cycles(graph):
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def report(top=5):
    modules = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    sizes, funcs, graph, lazy_graph = [], [], {}, {}
    for name, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        sizes.append((len(text.splitlines()), name))
        funcs += [(n, f"{name}.{q}") for q, n in functions(tree)]
        graph[name] = imported_modules(tree, name, modules)
        lazy_graph[name] = imported_modules(tree, name, modules, lazy=True)
    # ``from ftlab.evaluate import X`` runs the package's lazy __getattr__, which imports the module
    # that defines X; the package itself imports nothing, so package nodes are dropped from the graph.
    packages = {n for n, path in modules.items() if path.name == "__init__.py"}
    for g in (graph, lazy_graph):
        for n in list(g):
            g[n] = g[n] - packages
            if n in packages:
                g[n] = set()
    sizes.sort(reverse=True); funcs.sort(reverse=True)
    return {"modules": len(modules), "lines": sum(s for s, _ in sizes), "largest_modules": sizes[:top],
            "largest_functions": funcs[:top], "cycles": cycles(graph), "lazy_cycles": cycles(lazy_graph)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top", type=int, default=5)
    r = report(ap.parse_args().top)
    print(f"{r['modules']} modules, {r['lines']} lines")
    print("largest modules:")
    for n, name in r["largest_modules"]:
        print(f"  {n:5d}  {name}")
    print("largest functions:")
    for n, name in r["largest_functions"]:
        print(f"  {n:5d}  {name}")
    print(f"import cycles at module level: {len(r['cycles'])}")
    for c in r["cycles"]:
        print("  " + " <-> ".join(c))
    print(f"import cycles counting imports inside functions: {len(r['lazy_cycles'])}")
    for c in r["lazy_cycles"]:
        print("  " + " <-> ".join(c))


if __name__ == "__main__":
    main()
