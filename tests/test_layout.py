"""The package's layout: no import cycle among its own modules, every internal import resolves,
no module over 600 lines (a few listed exceptions while their split is pending).

Imports are read with ``ast``, inside functions too (an import inside a function still ties the
two modules together: it is only later). Not imported: nothing here loads torch.
"""

import ast
from pathlib import Path

import pytest

PKG = "animefaces"
ROOT = Path(__file__).resolve().parents[1] / PKG
MAX_LINES = 600
# module (path under animefaces/) -> why it may be longer for now; remove the entry with the split
TOO_LONG_FOR_NOW = {
}


def _modules():
    mods = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def _names(tree):
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out.update(n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update(a.asname or a.name.split(".")[0] for a in node.names)
    return out


def _imports():
    """(module, imported module, line) for every import of the package's own modules, and the
    imports that do not resolve."""
    mods = _modules()
    trees = {m: ast.parse(p.read_text(encoding="utf-8")) for m, (p, _) in mods.items()}
    names = {m: _names(t) for m, t in trees.items()}
    lazy = {m for m, t in trees.items()
            if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in t.body)}
    edges, broken = [], []
    for m, (path, is_pkg) in mods.items():
        where = path.relative_to(ROOT.parent)
        for node in ast.walk(trees[m]):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == PKG:
                        if a.name in mods:
                            edges.append((m, a.name, node.lineno))
                        else:
                            broken.append(f"{where}:{node.lineno}: import {a.name}: no such module")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != PKG:
                    continue
                if target not in mods:
                    broken.append(f"{where}:{node.lineno}: from {target} import ...: no such module")
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in mods:
                        edges.append((m, sub, node.lineno))
                        continue
                    edges.append((m, target, node.lineno))
                    if a.name != "*" and a.name not in names[target] and target not in lazy:
                        broken.append(f"{where}:{node.lineno}: {a.name} is not defined in {target}")
    return mods, edges, broken


def _cycles(nodes, edges):
    graph = {n: set() for n in nodes}
    for a, b, _ in edges:
        if a != b:
            graph[a].add(b)
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    mods, edges, _ = _imports()
    found = _cycles(mods, edges)
    lines = []
    for comp in found:
        lines.append(" <-> ".join(comp))
        lines += [f"    {mods[a][0].relative_to(ROOT.parent)}:{ln} imports {b}"
                  for a, b, ln in edges if a in comp and b in comp and a != b]
    assert not found, "import cycles among the package's modules:\n" + "\n".join(lines)


def test_internal_imports_resolve():
    _, _, broken = _imports()
    assert not broken, "imports of modules or names that do not exist:\n" + "\n".join(broken)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")))
def test_module_size(path):
    n = len((ROOT / path).read_text(encoding="utf-8").splitlines())
    if path in TOO_LONG_FOR_NOW:
        assert n > MAX_LINES, f"{path} has {n} lines now: remove it from TOO_LONG_FOR_NOW"
        return
    assert n <= MAX_LINES, (f"{path} has {n} lines (at most {MAX_LINES}): split it by job, or list it "
                            f"in TOO_LONG_FOR_NOW with the split that is pending")


def test_every_package_folder_is_a_package():
    for d in [ROOT, *(p for p in ROOT.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        if any(d.glob("*.py")):
            assert (d / "__init__.py").is_file(), f"{d.relative_to(ROOT.parent)} has modules but no __init__.py"
