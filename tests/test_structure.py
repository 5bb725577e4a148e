"""The shape of the package: no import cycle between modules (imports inside functions count too:
a function-level import that closes a cycle is still a cycle), no module over 500 lines, and the
public API importable from the top-level package."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "gemmascope")
MAX_LINES = 500


def _modules() -> dict[str, str]:
    """``{dotted module name: path}`` for every ``.py`` file under ``gemmascope/``."""
    out = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _resolve(name: str, modules: dict[str, str]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def import_graph() -> dict[str, set[str]]:
    """Edges module -> modules it imports (anywhere in the file), our package only."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.endswith("__init__.py")
        package = mod if is_pkg else mod.rpartition(".")[0]
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[: len(up) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                # "from pkg import sub" imports the module pkg.sub when it exists.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                r = _resolve(t, modules)
                if r is not None and r != mod and not (is_pkg and r.startswith(mod + ".")):
                    graph[mod].add(r)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(g) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30  # the walk found the package
    assert find_cycles(graph) == []


def test_no_module_over_500_lines():
    long = {}
    for mod, path in _modules().items():
        with open(path, encoding="utf-8") as fh:
            n = sum(1 for _ in fh)
        if n > MAX_LINES:
            long[mod] = n
    assert long == {}


def test_public_api_resolves_to_the_documented_objects():
    import importlib
    import pkgutil

    import gemmascope as gs

    for m in pkgutil.walk_packages(gs.__path__, "gemmascope."):  # subpackages must not shadow API names
        importlib.import_module(m.name)
    from gemmascope.data import sites
    from gemmascope.lm import loading as lm_loading
    from gemmascope.sae.files import io as sae_io
    from gemmascope.sae.files import model as sae_model
    from gemmascope.train import loop

    assert gs.load_lm is lm_loading.load_lm and gs.LM is lm_loading.LM and gs.capture is sites.capture
    assert gs.load_sae is sae_io.load_params and gs.encode is sae_model.encode and gs.decode is sae_model.decode
    assert gs.train_and_evaluate is loop.train_and_evaluate
    for name in gs.__all__:
        assert callable(getattr(gs, name)), name
    cfg = gs.get_config(os.path.join(REPO, "configs", "toy.py") + ":runlocal")
    assert cfg.source == "toy"


def test_importing_the_package_starts_no_jax_backend():
    """jax.distributed.initialize() must run before any JAX computation, so no module may compute
    with JAX at import time (a module-level ``jnp`` constant once broke the multi-host start)."""
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, gemmascope\n"
        "from jax._src import xla_bridge as xb\n"
        "for m in pkgutil.walk_packages(gemmascope.__path__, 'gemmascope.'):\n"
        "    importlib.import_module(m.name)\n"
        "    assert not xb._backends, m.name\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
