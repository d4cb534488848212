#!/usr/bin/env python3
"""The module graph of src/: which top-level module uses which (`crate::X` paths, tests
left out), and any cycle between them. Usage: scripts/module-graph.py [--edges]. Exit 1 on a cycle."""
import os, re, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
mods = {}
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(dirpath, f), root)
        top = rel.split(os.sep)[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        if f == "tests.rs":
            continue  # test-only modules may reach anywhere
        text = open(os.path.join(dirpath, f)).read()
        # A file's unit tests (a trailing `#[cfg(test)] mod tests`) are not its uses either.
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        # Drop comments so doc links do not count as uses.
        text = re.sub(r"//[^\n]*", "", text)
        for m in re.finditer(r"crate::([a-z_]+)", text):
            if m.group(1) != top:
                mods.setdefault(top, set()).add(m.group(1))
        mods.setdefault(top, set())
edges = {a: sorted(b & mods.keys()) for a, b in mods.items()}

# Tarjan's strongly connected components.
index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v: break
        if len(c) > 1: sccs.append(sorted(c))
for v in sorted(edges):
    if v not in index:
        visit(v)
if "--edges" in sys.argv:
    for a in sorted(edges):
        print(f"{a:10} -> {', '.join(edges[a]) or '-'}")
for c in sccs:
    print("cycle:", " <-> ".join(c))
if not sccs:
    print(f"{len(edges)} top-level modules, no cycle")
sys.exit(1 if sccs else 0)
