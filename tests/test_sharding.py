"""Sharded sweep step: equals the single-device step on 8 fake CPU devices for every mesh shape,
checkpoints move between meshes, the partition rule covers every architecture's leaves, and bad
meshes fail before compute naming the field and the numbers.

The 8-device part runs in one subprocess (XLA_FLAGS must be set before JAX starts). Tolerance:
every state leaf and metric after 3 steps within 1e-5, absolute for values below 1 and relative
above (``|a - b| / max(1, |b|)``; the loss and L0 metrics are 10-60 here). The sharded step only
reorders fp32 sums (the batch mean over "data", the decoder contraction over "model").
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gemmascope import config as config_lib
from gemmascope.train import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5

SCRIPT = r"""
import os, sys, json, tempfile
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, %(repo)r)
import numpy as np, jax, jax.numpy as jnp
from gemmascope import config as config_lib
from gemmascope.train import sharding, step as step_lib
from gemmascope.train.checkpoint import Checkpoints

K, D_IN, D_SAE, B, STEPS = 2, 16, 64, 32, 3
def cfg(data, model, sweep, arch="jumprelu"):
    c = config_lib.base_config()
    c.sae.arch, c.sae.topk_ks, c.sae.auxk_k = arch, (4, 8), 16
    c.sites, c.widths, c.lambdas, c.batch_size = ("toy",), (D_SAE,), (1e-3, 3e-2), B
    c.lr, c.lr_warmup_steps, c.lambda_warmup_steps = 2e-2, 1, 1
    c.mesh.data, c.mesh.model, c.mesh.sweep = data, model, sweep
    return config_lib.validate(c)

rng = np.random.default_rng(0)
xs = [(rng.standard_normal((B, D_IN)) * 3.0).astype(np.float32) for _ in range(STEPS)]
lams = [1e-3, 3e-2]
key = jax.random.PRNGKey(0)

# Reference: today's single-device path (plain jit on the default device).
c1 = cfg(1, 1, "replicated")
init = lambda c: step_lib.init_state(key, c, D_IN, d_sae=D_SAE, n_saes=K, norm_scale=2.5)
state0 = jax.device_get(init(c1))
ref_fn = jax.jit(step_lib.make_train_step(c1, 5))
ref, ref_m, ref_states = state0, None, []
for x in xs:
    ref, ref_m = ref_fn(ref, jnp.asarray(x), jnp.asarray(lams))
    ref_states.append(jax.device_get(ref))
ref, ref_m = jax.device_get((ref, ref_m))

def maxdiff(a, b):  # |a - b| / max(1, |b|): absolute below 1, relative above (loss, L0 reach ~10-60)
    def d(u, v):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        return float(np.max(np.abs(u - v) / np.maximum(1.0, np.abs(v))))
    return max(jax.tree.leaves(jax.tree.map(d, a, b)))

def run(data, model, sweep, state=None, steps=range(STEPS)):
    c = cfg(data, model, sweep)
    mesh = sharding.make_mesh(c)
    sw = sharding.ShardedSweep(c, mesh, jax.eval_shape(lambda: init(c)), D_IN, D_SAE)
    st = sw.init(lambda: init(c)) if state is None else state
    fn = sw.jit_step(step_lib.make_train_step(c, 5))
    vals = sw.put_values(lams)
    for i in steps:
        st, m = fn(st, sw.put_batch(xs[i]), vals)
    return sw, st, m

out = {"n_devices": len(jax.devices()), "meshes": {},
       "moved": maxdiff(ref["params"], state0["params"])}
for data, model, sweep in [(8, 1, "replicated"), (4, 2, "replicated"), (2, 4, "replicated"), (1, 8, "replicated"),
                           (2, 4, "sharded"), (2, 1, "sharded")]:
    if data * model != 8:
        continue
    sw, st, m = run(data, model, sweep)
    w = st["params"]["W_enc"]; wd = st["params"]["W_dec"]; nu = st["opt"][1].nu["W_dec"]
    out["meshes"][f"{data}x{model}/{sweep}"] = {
        "state": maxdiff(jax.device_get(st), ref), "metrics": maxdiff(jax.device_get(m), ref_m),
        "W_enc_shard": list(w.addressable_shards[0].data.shape), "W_dec_shard": list(wd.addressable_shards[0].data.shape),
        "nu_W_dec_spec": str(nu.sharding.spec), "last_fired_shard": list(st["last_fired"].addressable_shards[0].data.shape),
        "b_dec_shard": list(st["params"]["b_dec"].addressable_shards[0].data.shape),
        "unit_rows": float(np.max(np.abs(np.linalg.norm(np.asarray(wd), axis=-1) - 1.0))),
    }

# Checkpoint: save after 2 steps under 4x2 (replicated sweep), restore under 2x4 (sharded sweep).
with tempfile.TemporaryDirectory() as d:
    sw_a, st_a, _ = run(4, 2, "replicated", steps=range(2))
    saved = jax.device_get(st_a)
    ck = Checkpoints(os.path.join(d, "ck")); ck.save(2, st_a, {"kind": "toy", "next_batch": 2}); ck.close()
    c_b = cfg(2, 4, "sharded")
    sw_b = sharding.ShardedSweep(c_b, sharding.make_mesh(c_b), jax.eval_shape(lambda: init(c_b)), D_IN, D_SAE)
    ck = Checkpoints(os.path.join(d, "ck"))
    step, st_b, data_state = ck.restore_latest(sw_b.abstract_state())
    ck.close()
    out["restore"] = {
        "step": step, "data": data_state, "vs_saved": maxdiff(jax.device_get(st_b), saved),
        "saved_vs_ref": maxdiff(saved, ref_states[1]),
        "W_enc_spec": str(st_b["params"]["W_enc"].sharding.spec),
        "mesh": dict(st_b["params"]["W_enc"].sharding.mesh.shape),
    }
    _, st_c, _ = run(2, 4, "sharded", state=st_b, steps=range(2, 3))
    out["restore"]["continued"] = maxdiff(jax.device_get(st_c), ref)
# TopK (k static per SAE index): a sharded sweep takes the plain partitioned jit, same result.
ct = cfg(1, 1, "replicated", "topk")
st_t = jax.device_get(step_lib.init_state(key, ct, D_IN, d_sae=D_SAE, n_saes=K, norm_scale=2.5))
ref_t, fn_t = st_t, jax.jit(step_lib.make_train_step(ct, 5))
for x in xs:
    ref_t, _ = fn_t(ref_t, jnp.asarray(x), jnp.asarray([4.0, 8.0]))
c2 = cfg(2, 4, "sharded", "topk")
sw = sharding.ShardedSweep(c2, sharding.make_mesh(c2), jax.eval_shape(lambda: st_t), D_IN, D_SAE)
st, fn = sw.init(lambda: step_lib.init_state(key, c2, D_IN, d_sae=D_SAE, n_saes=K, norm_scale=2.5)), sw.jit_step(step_lib.make_train_step(c2, 5))
for x in xs:
    st, m = fn(st, sw.put_batch(x), sw.put_values([4.0, 8.0]))
out["topk_sharded"] = {"state": maxdiff(jax.device_get(st), jax.device_get(ref_t)), "l0": jax.device_get(m["l0"]).tolist(),
                       "moved": maxdiff(jax.device_get(ref_t)["params"], st_t["params"])}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def eight_devices():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT % {"repo": REPO}], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_sharded_step_equals_single_device(eight_devices):
    out = eight_devices
    assert out["n_devices"] == 8
    assert out["moved"] > 1e-3  # three steps really changed the params (the comparison is not vacuous)
    assert set(out["meshes"]) == {"8x1/replicated", "4x2/replicated", "2x4/replicated", "1x8/replicated", "2x4/sharded"}
    for name, r in out["meshes"].items():
        assert r["state"] <= TOL, (name, r)
        assert r["metrics"] <= TOL, (name, r)
        assert r["unit_rows"] < 1e-5, (name, r)  # renormalisation ran inside the sharded step


@pytest.mark.parametrize(
    "mesh,k_local,latents",
    [
        ("8x1/replicated", 2, 64),
        ("4x2/replicated", 2, 32),
        ("2x4/replicated", 2, 16),
        ("1x8/replicated", 2, 8),
        ("2x4/sharded", 1, 16),
    ],
)
def test_each_device_holds_its_slice(eight_devices, mesh, k_local, latents):
    r = eight_devices["meshes"][mesh]
    assert r["W_enc_shard"] == [k_local, 16, latents]
    assert r["W_dec_shard"] == [k_local, latents, 16]
    assert r["last_fired_shard"] == [k_local, latents]
    assert r["b_dec_shard"] == [k_local, 16]  # d_in leaves are never split
    k_axis = "'data'" if mesh.endswith("sharded") else "None"
    assert r["nu_W_dec_spec"] == f"P({k_axis}, 'model', None)"


def test_topk_sweep_sharded_over_data(eight_devices):
    r = eight_devices["topk_sharded"]
    assert r["moved"] > 1e-3 and r["state"] <= TOL, r
    assert r["l0"] == [4.0, 8.0]  # each SAE kept its own k although the stack is split over "data"


def test_checkpoint_moves_between_meshes(eight_devices):
    r = eight_devices["restore"]
    assert r["step"] == 2 and r["data"] == {"kind": "toy", "next_batch": 2}
    assert r["vs_saved"] == 0.0  # restore is exact
    assert r["saved_vs_ref"] <= TOL
    assert r["mesh"] == {"data": 2, "model": 4}
    assert r["W_enc_spec"] == "P('data', None, 'model')"
    assert r["continued"] <= TOL  # one more step under the new mesh lands on the reference


def test_partition_rule_covers_every_architecture():
    """Leaf names of jumprelu (both threshold forms), relu/topk and gated, plus optimiser moments."""
    k, d_in, d_sae = 3, 8, 32
    s = jax.ShapeDtypeStruct
    params = {
        "W_enc": s((k, d_in, d_sae), np.float32),
        "W_dec": s((k, d_sae, d_in), np.float32),
        "b_enc": s((k, d_sae), np.float32),
        "b_dec": s((k, d_in), np.float32),
        "threshold": s((k, d_sae), np.float32),
        "log_threshold": s((k, d_sae), np.float32),
        "r_mag": s((k, d_sae), np.float32),
        "b_gate": s((k, d_sae), np.float32),
        "b_mag": s((k, d_sae), np.float32),
    }
    state = {
        "params": params,
        "opt": ({"count": s((k,), np.int32), "mu": params, "nu": params},),
        "step": s((), np.int32),
        "norm_scale": s((), np.float32),
        "last_fired": s((k, d_sae), np.int32),
        "bad_step": s((k,), np.int32),
    }
    for sweep, ka in (("replicated", None), ("sharded", "data")):
        specs = sharding.state_specs(state, d_sae, sweep)
        for tree in (specs["params"], specs["opt"][0]["mu"], specs["opt"][0]["nu"]):
            assert tree["W_enc"] == P(ka, None, "model")
            assert tree["W_dec"] == P(ka, "model", None)
            assert tree["b_dec"] == P(ka, None)
            for name in ("b_enc", "threshold", "log_threshold", "r_mag", "b_gate", "b_mag"):
                assert tree[name] == P(ka, "model"), name
        assert specs["opt"][0]["count"] == P(ka)
        assert specs["last_fired"] == P(ka, "model") and specs["bad_step"] == P(ka)
        assert specs["step"] == P() and specs["norm_scale"] == P()


def _cfg(**mesh):
    c = config_lib.base_config()
    c.sites, c.widths, c.lambdas, c.batch_size = ("toy",), (96,), (1e-3, 1e-2, 3e-2), 48
    for k, v in mesh.items():
        c.mesh[k] = v
    return c


@pytest.mark.parametrize(
    "mesh,message",
    [
        (dict(model=64), "config.mesh.model: width 96 is not divisible by mesh.model=64"),
        (dict(data=5), "config.mesh.data: batch_size 48 is not divisible by mesh.data=5"),
        (
            dict(data=2, sweep="sharded"),
            "config.mesh.sweep: 'sharded' splits the K=3 SAEs of the sweep over mesh.data=2",
        ),
        (dict(sweep="tiled"), "config.mesh.sweep: must be 'replicated' or 'sharded'"),
        (dict(data=0), "config.mesh.data: must be a positive integer, got 0"),
    ],
)
def test_bad_mesh_fails_in_validation(mesh, message):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(_cfg(**mesh))
    assert message in str(e.value)


def test_mesh_larger_than_devices_fails_before_compute(tmp_path):
    from gemmascope.train import loop

    n = len(jax.devices())
    c = _cfg(data=2 * n, model=2)
    c.batch_size = 16 * n
    with pytest.raises(config_lib.ConfigError) as e:
        loop.train_and_evaluate(config_lib.lock(c), str(tmp_path / "w"), log=lambda *a: None)
    assert f"data * model = {2 * n} * 2 = {4 * n} devices, but {n} cpu devices are available" in str(e.value)
    assert not (tmp_path / "w").exists()  # nothing was written or computed


def test_single_process_feeds_whole_batch():
    mesh = sharding.make_mesh(_cfg())
    assert sharding.process_rows(mesh, 48) == (0, 1)


# ---------------------------------------------------------------------------------------------
# Sweep configs (docs/SPEC.md section 2 coverage) and the dry run


def _load_config(name: str, arg: str | None):
    import importlib.util

    from gemmascope.config.files import config_file_path

    spec = importlib.util.spec_from_file_location(name, config_file_path(os.path.join(REPO, "configs", f"{name}.py")))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


@pytest.mark.parametrize(
    "model,n_layers,expected",
    [
        ("2b", 26, 26 * 3 * 2 + 4 + 3),  # every layer/site at 16k, 65k; layer 12 at 32k,131k,262k,524k; 3 layers at 1m
        ("9b", 42, 42 * 3 * 2 + 4 + 3),  # every layer/site at 16k, 131k; layer 20 at 32k,65k,262k,524k; 3 at 1m
        ("27b", 46, 3),  # layers 10, 22, 34 at 131k
    ],
)
def test_sweep_configs_cover_gemma_scope(model, n_layers, expected):
    from gemmascope.config import coverage

    got = set()
    for job in coverage.jobs(model):
        c = config_lib.validate(config_lib.resolve(_load_config(f"sweep_{model}", job)))
        assert len(c.lambdas) == 6 and c.batch_size == 4096
        assert all(0 <= layer < n_layers for layer in c.layers)
        w = c.widths[0]
        assert c.num_tokens == (4e9 if w == 2**14 else 16e9 if w == 2**20 else 8e9)
        got |= {(s, layer, w) for s in c.sites for layer in c.layers for w in c.widths}
    assert len(got) == expected == len(coverage.locations(model))
    if model != "27b":
        mid = {"2b": 12, "9b": 20}[model]
        assert ("att", n_layers - 1, 2**14) in got and ("mlp", 0, 2**14) in got
        assert {("res", mid, 2**e) for e in range(14, 21)} <= got  # 16k .. 1m at the middle layer
        assert ("att", mid, 2**20) not in got
    width, layer = {"2b": ("1m", 19), "9b": ("1m", 31), "27b": ("131k", 34)}[model]
    one = _load_config(f"sweep_{model}", f"width={width},layer={layer}")
    assert one.sites == ("res",) and len(one.layers) == 1
    with pytest.raises(config_lib.ConfigError, match="not covered|no .* SAEs of that width"):
        _load_config(f"sweep_{model}", "width=1m,layer=0,site=att")


def _dry_run(arg: str, *extra: str):
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch/train.py"), f"--config={REPO}/configs/{arg}", "--dry_run", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r.returncode, r.stdout + r.stderr


def test_dry_run_1m_width_on_16_fake_devices():
    """2B width 1m: 16 fake devices (2 data groups of 3 SAEs x 8 latent shards), nothing allocated.

    The state per device is checked against the shapes: 3 SAEs x (params + Adam nu), latent-sized
    leaves split 8 ways, d_in-sized ones whole."""
    rc, out = _dry_run("sweep_2b.py:width=1m,layer=12")
    assert rc == 0, out[-3000:]
    assert "mesh data=2 x model=8 (16 fake cpu devices), sweep=sharded, K=6" in out
    import re

    m = re.search(r"per device state ([\d.]+) GB.*= peak ([\d.]+) GB -> fits 95 GB; step ([\d.]+) TFLOP", out)
    assert m, out[-2000:]
    d, w, k_local, model = 2304, 2**20, 3, 8
    # params + nu (W_enc, W_dec, b_enc, threshold split; b_dec whole), last_fired, 2 counts, bad_step
    per_sae = 2 * (2 * d * w + 2 * w) // model * 4 + 2 * d * 4 + w // model * 4 + 4 + 4 + 4
    assert abs(float(m.group(1)) - k_local * per_sae / 1e9) < 0.01
    assert float(m.group(1)) < float(m.group(2)) < 95
    assert abs(float(m.group(3)) - 10 * 4096 * d * w * 6 / 1e12) < 0.01


def test_dry_run_reports_a_mesh_too_small():
    rc, out = _dry_run("sweep_9b.py:width=1m,layer=20,data=2,model=4", "--device_memory_gb=95")
    assert rc == 1 and "DOES NOT FIT 95 GB" in out and "mesh data=2 x model=4 (8 fake cpu devices)" in out
