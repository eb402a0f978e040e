"""Print the package's size facts and its import graph: the largest modules and functions, the
package-level graph with its cycles, and every import that goes up a layer.

    python scripts/layout_report.py            # the summary
    python scripts/layout_report.py --top 15   # more rows
    python scripts/layout_report.py --root /some/checkout   # another checkout (its ftlab/)

It reads the source with `ast` only (nothing is imported), so anyone can rerun it on any checkout.

Every import is resolved to the module that *defines* the imported name: module-level imports and
imports inside functions, relative imports, imports through a package's exports (its plain
``from .x import name`` lines, or a lazy ``_EXPORTS`` table), and ``import ftlab`` followed by
``ftlab.name``. A package's ``__init__`` only re-exports, so an import that goes through it counts
as an edge to the defining module, never to the package.

The layers are declared in ``LAYERS`` (the same list as in docs/architecture.md), lowest first. A
module may import only from its own layer or a lower one. The *unit* of a module is ``ftlab.X`` (its
top-level package or module); the package-level graph joins units, and a cycle there is a group of
units that import one another, whatever the route.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A unit is ftlab.X (a package or a top-level module). A module may import from its own
# layer and the layers below it, never from one above. Keep in step with docs/architecture.md.
LAYERS = [
    ("base", ["ftlab._lazy", "ftlab.profiles", "ftlab.hub", "ftlab.models", "ftlab.generation"]),
    ("data", ["ftlab.data"]),
    ("memory", ["ftlab.memory", "ftlab.budget"]),
    ("training", ["ftlab.training"]),
    ("evaluate", ["ftlab.evaluate"]),
    ("align", ["ftlab.align"]),
    ("deploy", ["ftlab.deploy"]),
    ("preflight", ["ftlab.preflight"]),
    ("notebook UI", ["ftlab.ui", "ftlab.workshop"]),
    ("exercises", ["ftlab.exercises"]),
    ("bench", ["ftlab.bench"]),
    ("cli", ["ftlab.cli", "ftlab.__main__"]),
]
# The top-level package ``ftlab`` itself is the facade: its lazy table names every public name and
# imports nothing up front; imports through it resolve to the defining module.
FACADE = "ftlab"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def layer_index(layers=LAYERS) -> dict[str, int]:
    return {unit: i for i, (_, units) in enumerate(layers) for unit in units}


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


class Source:
    """Every ftlab module's tree, and for each package the names it re-exports (name -> module)."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = {module_name(p, root): p for p in sorted((root / "ftlab").rglob("*.py"))}
        self.trees = {name: ast.parse(p.read_text(), str(p)) for name, p in self.paths.items()}
        self.packages = {n for n, p in self.paths.items() if p.name == "__init__.py"}
        self._exports: dict[str, dict[str, str]] = {}

    def base_of(self, module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = module if module in self.packages else module.rpartition(".")[0]
        parts = package.split(".")
        parts = parts[: len(parts) - node.level + 1]
        return ".".join(parts + ([node.module] if node.module else []))

    def exports(self, package: str) -> dict[str, str]:
        """name -> the module a package's ``__init__`` takes it from (one step; ``resolve`` follows on)."""
        if package not in self._exports:
            table: dict[str, str] = {}
            for node in self.trees[package].body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
                    for k, v in zip(node.value.keys, node.value.values):
                        table[k.value] = f"{package}.{v.value}"
                elif isinstance(node, ast.ImportFrom):
                    base = self.base_of(package, node)
                    for a in node.names:
                        table[a.asname or a.name] = base + "#" + a.name  # name as the source module calls it
            self._exports[package] = table
        return self._exports[package]

    def defines(self, package: str, name: str) -> bool:
        """True when the package's ``__init__`` itself defines ``name`` (a def, class or assignment)."""
        for node in self.trees[package].body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                return True
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
                return True
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":  # a name it makes on demand
                if any(isinstance(c, ast.Constant) and c.value == name for c in ast.walk(node)):
                    return True
        return False

    def resolve(self, module: str, name: str | None, seen=()) -> str | None:
        """The ftlab module that defines ``name`` imported from ``module`` (None: not an ftlab module)."""
        if name is not None and f"{module}.{name}" in self.paths:
            return f"{module}.{name}"  # a submodule
        if module not in self.paths:
            return None
        if name is None or module not in self.packages or (module, name) in seen:
            return module
        target = self.exports(module).get(name)
        if target is None:
            return module  # defined in the __init__ itself (or not at all: the import fails anyway)
        target_module, _, real_name = target.partition("#")
        return self.resolve(target_module, real_name or name, seen + ((module, name),))

    def edges(self, module: str):
        """(line, target module, at module level?) for every ftlab import in ``module``."""
        tree = self.trees[module]
        top = {id(n) for n in tree.body}
        aliases: dict[str, str] = {}  # ``import ftlab.x as y`` / ``import ftlab``: local name -> module
        out = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "ftlab" or a.name.startswith("ftlab."):
                        aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else "ftlab"
                        if a.name != FACADE:
                            out.append((node.lineno, a.name, id(node) in top))
            elif isinstance(node, ast.ImportFrom):
                base = self.base_of(module, node)
                if base != "ftlab" and not base.startswith("ftlab."):
                    continue
                for a in node.names:
                    target = self.resolve(base, a.name)
                    if target in self.packages:  # ``from ftlab.evaluate import metrics``, then ``metrics.bleu``
                        aliases[a.asname or a.name] = target
                    if target is not None and target != module:
                        out.append((node.lineno, target, id(node) in top))
        # ``ftlab.train(...)`` after ``import ftlab``: follow the attribute chain through the exports.
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                target = self.resolve(aliases[node.value.id], node.attr)
                if target is not None and target not in (module, FACADE):
                    out.append((node.lineno, target, False))
        return [e for e in out if e[1] != module]


def _code_files(root: Path):
    """(file, source) of everything that may import ftlab: the package, tests, scripts, the hub, notebooks."""
    import json

    for pattern in ("ftlab/**/*.py", "tests/**/*.py", "scripts/*.py", "workshop/**/*.py"):
        for f in sorted(root.glob(pattern)):
            yield f, f.read_text()
    for nb in sorted(root.glob("notebooks/*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = ["".join(line for line in "".join(c["source"]).splitlines(True)
                        if not line.lstrip().startswith(("%", "!")))  # IPython magics are not Python
                for c in cells if c["cell_type"] == "code"]
        yield nb, "\n".join(code)


def unused_exports(root=DEFAULT_ROOT, missing: list | None = None) -> list[str]:
    """Names a subpackage's ``__init__`` imports that no file outside the defining module imports from
    that package (``from ftlab.data import x``, ``ftlab.data.x``, ``data.x`` after ``from ftlab import data``).
    With a ``missing`` list, also appends the names used that way that the package does not offer."""
    root = Path(root)
    src = Source(root)
    packages = sorted(p for p in src.packages if p != FACADE)
    used = {p: set() for p in packages}
    for f, code in _code_files(root):
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        here = module_name(f, root) if f.suffix == ".py" and f.is_relative_to(root / "ftlab") else None
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in used and node.module != here:
                used[node.module].update(a.name for a in node.names)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                base = "" if isinstance(node, ast.Import) else (node.module or "")
                for a in node.names:
                    full = f"{base}.{a.name}" if base else a.name
                    if full in used:
                        aliases[a.asname or (a.name if base else full)] = full
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                chain, v = [node.attr], node.value
                while isinstance(v, ast.Attribute):
                    chain.append(v.attr); v = v.value
                if isinstance(v, ast.Name):
                    owner = aliases.get(v.id, v.id) + "".join("." + c for c in reversed(chain[1:]))
                    if owner in used and owner != here:
                        used[owner].add(chain[0])
    if missing is not None:  # the other direction: names used through a package that it does not offer
        for p in packages:
            missing += [f"{p}.{name}" for name in sorted(used[p]) if name not in src.exports(p)
                        and f"{p}.{name}" not in src.paths and not src.defines(p, name)]
    out = []
    for p in packages:
        for name in sorted(src.exports(p)):
            if name not in used[p] and not name.startswith("_"):
                out.append(f"{p}.{name}")
    return out


def cycles(graph):
    """Tarjan's strongly connected components with more than one node."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in sorted(graph.get(v, ())):
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


def report(top=5, root=DEFAULT_ROOT, layers=LAYERS):
    src = Source(Path(root))
    sizes, funcs = [], []
    graph, lazy_graph, units = {}, {}, {}
    edges = []  # (file, line, source module, target module)
    for name, path in src.paths.items():
        text = path.read_text()
        sizes.append((len(text.splitlines()), name))
        funcs += [(n, f"{name}.{q}") for q, n in functions(src.trees[name])]
        graph[name], lazy_graph[name] = set(), set()
        for line, target, module_level in src.edges(name):
            edges.append((str(path.relative_to(src.root)), line, name, target))
            lazy_graph[name].add(target)
            if module_level:
                graph[name].add(target)
            if name != FACADE and unit_of(name) != unit_of(target):
                units.setdefault(unit_of(name), set()).add(unit_of(target))
    rank = layer_index(layers)
    names = [n for n, _ in layers]
    unplaced = sorted({unit_of(m) for m in src.paths if m != FACADE and unit_of(m) not in rank})
    upward = []
    for file, line, source, target in sorted(set(edges)):
        if source == FACADE or unit_of(source) not in rank or unit_of(target) not in rank:
            continue
        s, t = rank[unit_of(source)], rank[unit_of(target)]
        if t > s:
            upward.append(f"{file}:{line}: {source} (layer {names[s]}) imports {target} (layer {names[t]}); "
                          f"a module may import only from its own layer or lower ones "
                          f"({' -> '.join(names)}, docs/architecture.md)")
    sizes.sort(reverse=True); funcs.sort(reverse=True)
    return {"modules": len(src.paths), "lines": sum(s for s, _ in sizes), "largest_modules": sizes[:top],
            "largest_functions": funcs[:top], "cycles": cycles(graph), "lazy_cycles": cycles(lazy_graph),
            "package_graph": {u: sorted(v) for u, v in sorted(units.items())},
            "package_cycles": cycles(units), "upward": upward, "unplaced": unplaced}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--root", default=str(DEFAULT_ROOT), help="the checkout whose ftlab/ to read")
    a = ap.parse_args()
    r = report(a.top, Path(a.root))
    print(f"{r['modules']} modules, {r['lines']} lines")
    print("largest modules:")
    for n, name in r["largest_modules"]:
        print(f"  {n:5d}  {name}")
    print("largest functions:")
    for n, name in r["largest_functions"]:
        print(f"  {n:5d}  {name}")
    print("package-level import graph (every import, resolved to the defining module):")
    for unit, targets in r["package_graph"].items():
        print(f"  {unit} -> {', '.join(targets)}")
    print(f"package-level import cycles: {len(r['package_cycles'])}")
    for c in r["package_cycles"]:
        print("  " + " <-> ".join(c))
    print(f"module-level import cycles: {len(r['cycles'])}; counting imports inside functions: {len(r['lazy_cycles'])}")
    for c in r["cycles"] + r["lazy_cycles"]:
        print("  " + " <-> ".join(c))
    print(f"imports that go up a layer: {len(r['upward'])}")
    for line in r["upward"]:
        print("  " + line)
    if r["unplaced"]:
        print(f"units in no layer: {', '.join(r['unplaced'])}")


if __name__ == "__main__":
    main()
