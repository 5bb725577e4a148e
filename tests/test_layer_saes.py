"""One JumpReLU SAE per layer from one LM pass (gemmascope.sae.layer_saes, sites ``res_all`` ...):
its loss and gradients are the per-layer JumpReLU losses' (exactly), and a whole-model sweep on a
tiny LM exports, per layer, the SAEs that single-location runs of the same config train (the
same rows, the same start; within 1e-5, the runs differing only in the order of float32 sums),
in the same folders, so every reader takes them as it takes single-location SAEs.
"""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.sae import jumprelu
from gemmascope.sae.common import SAEConfig
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.layer_saes import LayerSAEs
from gemmascope.train.loop import train_and_evaluate
from tests.test_clt_train import clt_cfg, tiny_lm, use_tiny_lm  # noqa: F401  (fixtures)

TOL = 1e-5


def test_the_loss_and_gradients_are_the_per_layer_jumprelu_ones():
    n, d, d_sae, b = 3, 4, 6, 8
    cfg = SAEConfig(sparsity_loss="quadratic", bandwidth=0.5)
    arch = LayerSAEs(n, d)
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    params = jax.tree.map(lambda *a: jnp.stack(a), *[jumprelu.init(k, d, d_sae, cfg) for k in keys])
    params = {**params, "threshold": jnp.full((n, d_sae), 0.05)}
    x = np.random.default_rng(0).standard_normal((b, n * d)).astype(np.float32)
    xy = jnp.asarray(np.concatenate([x, x], axis=1))
    sparsity = (jnp.float32(2.0), jnp.float32(0.3))
    (loss, aux), grads = jax.value_and_grad(lambda p: arch.loss(p, xy, cfg, sparsity), has_aux=True)(params)
    total, l0s = 0.0, []
    for l in range(n):
        p_l = jax.tree.map(lambda a: a[l], params)
        xl = jnp.asarray(x[:, l * d : (l + 1) * d])
        (loss_l, aux_l), g_l = jax.value_and_grad(lambda p: jumprelu.loss(p, xl, cfg, sparsity), has_aux=True)(p_l)
        total += float(loss_l)
        l0s.append(float(aux_l["l0"]))
        for k, g in g_l.items():
            np.testing.assert_allclose(np.asarray(grads[k][l]), np.asarray(g), rtol=1e-6, atol=1e-7, err_msg=k)
    assert float(loss) == pytest.approx(total, rel=1e-6)
    assert float(aux["l0"]) == pytest.approx(np.mean(l0s), rel=1e-6) and aux["fired"].shape == (n * d_sae,)


def _cfg(**over):
    over = {"sites": ("res_all",), "layers": (0, 2), "widths": (24,), "num_tokens": 64 * 6, **over}
    return clt_cfg(**over)


def _exports(wd):
    out = {}
    for path in glob.glob(os.path.join(wd, "saes", "res", "layer_*", "width_24", "*", "*", "params.npz")):
        meta = sae_io.load_metadata(os.path.dirname(path))
        out[(meta["layer"], meta["sweep_value"])] = (sae_io.load_params(path), meta)
    return out


def test_a_whole_model_sweep_exports_what_single_location_runs_train(use_tiny_lm, tmp_path):  # noqa: F811
    together = str(tmp_path / "all")
    recs = train_and_evaluate(_cfg(), together, log=lambda *a: None)
    assert len(recs) == 2 * 2
    assert len(glob.glob(os.path.join(together, "runs", "*"))) == 1  # one location, one LM pass per batch
    alone = str(tmp_path / "alone")
    train_and_evaluate(_cfg(sites=("res",)), alone, log=lambda *a: None)
    got, want = _exports(together), _exports(alone)
    assert sorted(got) == sorted(want) and len(got) == 4
    for key, (p, meta) in got.items():
        q, meta_alone = want[key]
        assert (meta["site"], meta["architecture"]) == ("res", "jumprelu")
        assert meta["l0"] == pytest.approx(meta_alone["l0"], rel=1e-3, abs=0.05)
        for k in p:
            scale = max(1.0, float(np.max(np.abs(q[k]))))
            np.testing.assert_allclose(p[k], q[k], rtol=0, atol=TOL * scale, err_msg=f"{key} {k}")


def test_per_layer_saes_refuse_per_dimension_scales():
    """The whole-model sweep exports each layer as a plain SAE with one C per layer; per-dimension
    scales (which CLTs and crosscoders fold into their files) are refused naming the field."""
    from tests.test_clt_train import assert_refused

    assert_refused(_cfg(), {"dim_scale_power": 1.0}, "dim_scale_power")
    assert_refused(_cfg(), {"dim_std_cap": 10.0}, "dim_std_cap")
