"""The sparse training path (gemmascope.sae.sparse): the same step as the dense path.

Tolerances: float32 sums in another order (the slots' gather/scatter against the dense matmuls),
so ``rtol 1e-5`` and ``atol 1e-6`` on losses, metrics and parameters (entries of order 0.1-1),
and ``rtol 1e-4`` on Adam's second moments (squares of gradients, whose relative rounding error
doubles), with ``atol`` 1e-6 of the largest moment.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import config as config_lib
from gemmascope.config.checks import ConfigError
from gemmascope.sae import archs, sparse
from gemmascope.sae.common import SAEConfig
from gemmascope.train import step as step_lib

D_IN, WIDTH, BATCH = 16, 256, 32


def test_active_slots_hold_every_active_latent_and_flag_overflow():
    """Rows with 0..cap active latents among 4,096 (64 chunks, so both stages choose): the slots
    are distinct and hold every active one; a row with cap + 1 sets ``overflow``."""
    rng = np.random.default_rng(0)
    n, cap = 4096, 24
    active = np.zeros((40, n), bool)
    for r in range(40):
        active[r, rng.choice(n, size=min(r, cap), replace=False)] = True
    active[39] = False
    active[39, :cap] = True  # a row whose active latents are all in one chunk
    fn = jax.jit(sparse.active_slots, static_argnums=1)
    idx, used, overflow = (np.asarray(a) for a in fn(jnp.asarray(active), cap))
    assert idx.shape == (40, cap) and used == cap and not overflow
    for r in range(40):
        assert len(set(idx[r])) == cap
        n_active = int(active[r].sum())  # the active latents first: the loops stop at `used`
        assert set(np.flatnonzero(active[r])) == set(idx[r, :n_active]), r
    active[5, : cap + 1] = True
    assert bool(fn(jnp.asarray(active), cap)[2])
    assert int(fn(jnp.asarray(active[6:20]), cap)[1]) == 19  # rows 6..19: at most 19 active


def _config(path, arch, **sae):
    c = config_lib.base_config()
    c.sites, c.layers, c.widths = ("toy",), (0,), (WIDTH,)
    c.batch_size, c.lr = BATCH, 1e-3
    c.lambdas = (3e-2,)
    c.sae.arch, c.sae.sparse_path, c.sae.sparse_capacity = arch, path, 40
    c.sae.topk_ks, c.sae.auxk_k, c.sae.auxk_dead_tokens = (12,), 32, BATCH
    for k, v in sae.items():
        c.sae[k] = v
    if c.sae.sparsity_loss == "quadratic":
        c.target_l0s = (16.0,)
    return config_lib.validate(c)


CASES = {
    # Gemma Scope 2's loss with the JumpReLU extras (Matryoshka: BatchTopK's case), log thresholds
    # (pre-activations ~ N(0, 1): L0 ~ 17 at threshold 1.5; the L0 penalty is the same function
    # of the same per-row L0 on both paths)
    "jumprelu": dict(
        threshold_init=1.5,
        threshold_param="log",
        sparsity_loss="quadratic",
        quadratic_form="per_example",
        frequency_penalty=0.1,
        frequency_max=0.04,
        jumprelu_auxk=True,
    ),
    "topk": dict(arch="topk"),
    "batchtopk": dict(arch="batchtopk", matryoshka_prefixes=(64, WIDTH)),
}


def _batches(arch):
    """Step 1 sees zeros (at init no latent fires: pre = b_enc = 0), steps 2-4 Gaussian rows,
    step 5 the same after ``b_enc += 50`` (JumpReLU: every latent fires on every row), with row 0
    scaled by 100 for the others (BatchTopK: row 0 holds over 40 of the batch's kept activations)."""
    xs = [jnp.zeros((BATCH, D_IN), jnp.float32)]
    xs += [jax.random.normal(jax.random.PRNGKey(i), (BATCH, D_IN), jnp.float32) for i in range(3)]
    return xs + [xs[-1] if arch == "jumprelu" else xs[-1].at[0].multiply(100.0)]


def _run(c, arch=None, xs=None, norm_scale=1.0):
    state = step_lib.init_state(jax.random.PRNGKey(0), c, D_IN, d_sae=WIDTH, n_saes=1, norm_scale=norm_scale, arch=arch)
    fn = jax.jit(step_lib.make_train_step(c, dead_window_steps=10, arch=arch))
    sweep = jnp.asarray(config_lib.sweep_values(c), jnp.float32)
    xs = _batches(c.sae.arch) if xs is None else xs
    metrics, states = [], []
    for i, x in enumerate(xs):
        state = _last_step_hook(state, i, len(xs))
        state, m = fn(state, x, sweep)
        metrics.append(jax.device_get(m))
        states.append(jax.device_get(state))
    # Resumed from the (host) state after step 2, as from a checkpoint: the same states bitwise.
    state = jax.tree.map(jnp.asarray, states[1])
    for i in range(2, len(xs)):
        state, _ = fn(_last_step_hook(state, i, len(xs)), xs[i], sweep)
        for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(states[i])):
            np.testing.assert_array_equal(a, b, err_msg=f"resumed step {i + 1}")
    return states, metrics


def _last_step_hook(state, i, n):
    """Before the last step: ``b_enc += 50`` (see :func:`_batches`)."""
    if i < n - 1:
        return state
    return {**state, "params": {**state["params"], "b_enc": state["params"]["b_enc"] + 50.0}}


@pytest.mark.parametrize("case", list(CASES))
def test_sparse_step_equals_dense_step(case):
    """Five steps of each path from the same state on the same batches (each run also resumed from
    its state after step 2, bitwise the same): loss, every metric, the
    parameters and the optimiser state agree to float32 rounding, on the batch where no latent
    fires, on ordinary batches (taken sparse) and on the last, where a row overflows its 40 slots
    (taken dense; TopK's slots are its k, which never overflow)."""
    over = dict(CASES[case])
    arch = over.pop("arch", "jumprelu")
    dense, d_metrics = _run(_config("dense", arch, **over))
    sp, s_metrics = _run(_config("sparse", arch, **over))
    fallback = [float(m["sparse_fallback"][0]) for m in s_metrics]
    assert fallback[0] == 0.0 and 0.0 in fallback[1:4], fallback  # the sparse path ran
    assert float(s_metrics[0]["l0"][0]) == 0.0 and float(d_metrics[4]["l0"][0]) == (WIDTH if arch == "jumprelu" else 12)
    assert fallback[4] == (0.0 if arch == "topk" else 1.0)
    _assert_same(dense, d_metrics, sp, s_metrics)


def test_sparse_transcoder_step_equals_dense_step():
    """An affine transcoder (its own normalisation constants, the skip, the frequency penalty):
    no latent firing, an ordinary batch, every latent firing (dense fallback) agree as above."""
    over = dict(threshold_init=1.5, frequency_penalty=0.1, frequency_max=0.04)
    rng = np.random.default_rng(1)
    xs = [np.zeros((BATCH, D_IN + 6), np.float32)] + [rng.standard_normal((BATCH, D_IN + 6), np.float32)] * 2
    runs = {}
    for path in ("dense", "sparse"):
        c = _config(path, "jumprelu", **over)
        tc = archs.for_site(c, "transcoder_affine", 6)
        runs[path] = _run(c, tc, [jnp.asarray(x) for x in xs], norm_scale=(2.0, 0.5))
    fallback = [float(m["sparse_fallback"][0]) for m in runs["sparse"][1]]
    assert fallback == [0.0, 0.0, 1.0], fallback
    assert float(runs["dense"][1][1]["l0"][0]) > 0 and float(runs["dense"][1][2]["l0"][0]) == WIDTH
    _assert_same(*runs["dense"], *runs["sparse"])


def _assert_same(d_states, d_metrics, s_states, s_metrics):
    """Metrics and state after every step (the overflow step's large gradients would swamp the
    earlier ones' share of Adam's second moments in the final state alone)."""
    for i, (dm, sm, dense, sp) in enumerate(zip(d_metrics, s_metrics, d_states, s_states)):
        assert set(sm) == set(dm) | {"sparse_fallback"}
        for k in dm:
            np.testing.assert_allclose(sm[k], dm[k], rtol=1e-5, atol=1e-6, err_msg=f"step {i + 1} {k}")
        np.testing.assert_array_equal(sp["last_fired"], dense["last_fired"])
        for path, a in jax.tree_util.tree_leaves_with_path(dense["params"]):
            b = _at(sp["params"], path)
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=f"step {i + 1} {jax.tree_util.keystr(path)}")
        for path, a in jax.tree_util.tree_leaves_with_path(dense["opt"]):
            b = _at(sp["opt"], path)
            atol = 1e-6 * float(np.max(np.abs(a))) if np.size(a) else 0.0
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=atol, err_msg=f"step {i + 1} {jax.tree_util.keystr(path)}")


def _at(tree, path):
    for p in path:
        tree = tree[p.key] if hasattr(p, "key") else tree[p.idx] if hasattr(p, "idx") else getattr(tree, p.name)
    return tree


def test_sparse_path_field_is_validated_and_auto_chooses_by_width():
    c = config_lib.base_config()
    c.sae.sparse_path = "fast"
    with pytest.raises(ConfigError, match=r"config\.sae\.sparse_path: must be one of"):
        config_lib.validate(c)
    c.sae.sparse_path, c.sae.sparse_capacity = "auto", -1
    with pytest.raises(ConfigError, match=r"config\.sae\.sparse_capacity"):
        config_lib.validate(c)
    c.sae.sparse_capacity, c.sae.arch = 0, "relu"
    c.sae.sparse_path = "sparse"
    with pytest.raises(ValueError, match=r"config\.sae\.sparse_path: 'sparse', but architecture 'relu'"):
        step_lib.make_train_step(c, dead_window_steps=10)
    auto = SAEConfig()
    jr = archs.get("jumprelu")
    assert sparse.capacities(auto, jr, 4096, [1e-3]) is None  # the demos' width: dense
    assert sparse.capacities(auto, jr, 65536, [1e-3, 2e-3]) == [256, 256]
    assert sparse.capacities(SAEConfig(sparse_path="dense"), jr, 65536, [1e-3]) is None
    assert sparse.capacities(SAEConfig(arch="topk"), archs.get("topk"), 16384, [4096]) is None  # too dense
    assert sparse.capacities(SAEConfig(sparse_path="sparse"), jr, 64, [1e-3]) == [256]


def test_auto_at_the_demo_width_is_the_dense_step():
    """At width 4,096 "auto" compiles the very program "dense" does (so it cannot be slower)."""
    texts = {}
    for path in ("auto", "dense", "sparse"):
        c = config_lib.base_config()
        c.sae.sparse_path, c.batch_size = path, 64
        state = jax.eval_shape(
            lambda c=c: step_lib.init_state(jax.random.PRNGKey(0), c, 8, d_sae=4096, n_saes=1, norm_scale=1.0)
        )
        x = jax.ShapeDtypeStruct((64, 8), jnp.float32)
        lam = jax.ShapeDtypeStruct((1,), jnp.float32)
        texts[path] = jax.jit(step_lib.make_train_step(c, dead_window_steps=10)).lower(state, x, lam).as_text()
    assert texts["auto"] == texts["dense"] != texts["sparse"]
