"""configs/sweep_gemma3.py: Gemma Scope 2's coverage of Gemma 3 (SPEC.md section 7) as sweep configs
(one SAE per target L0, the quadratic recipe), and the dry run of its largest job (27B, width 1m,
16 fake devices of 95 GB)."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from gemmascope import config as config_lib
from gemmascope.config import coverage
from gemmascope.config.files import config_file_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(arg):
    path = config_file_path(os.path.join(REPO, "configs", "sweep_gemma3.py"))
    spec = importlib.util.spec_from_file_location("sweep_gemma3", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


@pytest.mark.parametrize(
    "size,n_layers,depths",
    [
        ("270m", 18, (5, 9, 12, 15)),
        ("1b", 26, (7, 13, 17, 22)),
        ("4b", 34, (9, 17, 22, 29)),
        ("12b", 48, (12, 24, 31, 41)),
        ("27b", 62, (16, 31, 40, 53)),
    ],
)
def test_sweep_gemma3_covers_gemma_scope_2(size, n_layers, depths):
    from gemmascope.lm import config as lmc

    model = f"gemma3-{size}"
    assert lmc.PRESETS[coverage.MODELS[model]["preset"]]().n_layers == n_layers
    got = set()
    for job in coverage.jobs(model):
        c = config_lib.validate(config_lib.resolve(_load(job)))
        assert c.lm.checkpoint.startswith("google/gemma-3-") and c.batch_size == 4096
        assert (c.sae.sparsity_loss, c.sae.threshold_init_mode) == ("quadratic", "quantile")
        assert config_lib.sweep_field(c) == "target_l0s" and config_lib.sweep_values(c) == [10.0, 60.0]
        assert all(0 <= l < n_layers for l in c.layers)
        got |= {(s, layer, w) for s in c.sites for layer in c.layers for w in c.widths}
    # every layer x {res, mlp, att} x {16k, 262k}; res at 65k and 1m at the four depths
    want = {(s, l, w) for s in ("res", "mlp", "att") for l in range(n_layers) for w in (2**14, 2**18)}
    want |= {("res", l, w) for l in depths for w in (2**16, 2**20)}
    assert got == want == set(coverage.locations(model))
    assert coverage.four_depths(n_layers) == depths


def test_sweep_gemma3_narrowing_and_errors():
    one = _load("model=1b,width=262k,layer=25,site=att")
    assert (one.sites, one.layers, one.widths) == (("att",), (25,), (2**18,))
    assert one.lm.checkpoint == "google/gemma-3-1b-pt" and one.store.sites == ("att",)
    assert (one.mesh.data, one.mesh.model) == (2, 4)
    assert _load("width=16k").lm.checkpoint == "google/gemma-3-270m"  # model defaults to 270m
    assert _load("model=4b,width=1m,layer=22,tp=4,data=4").mesh.model == 4
    with pytest.raises(config_lib.ConfigError, match="model=2b: not a Gemma 3 model"):
        _load("model=2b")
    with pytest.raises(config_lib.ConfigError, match="layer=0: not covered at width 1048576"):
        _load("model=27b,width=1m,layer=0")
    with pytest.raises(config_lib.ConfigError, match="site=mlp: not covered"):
        _load("model=27b,width=65k,layer=31,site=mlp")
    with pytest.raises(config_lib.ConfigError, match="no gemma3-270m SAEs of that width"):
        _load("model=270m,width=131k")


def test_dry_run_27b_width_1m_fits_16_devices_of_95_gb():
    """Compiled on 16 fake devices (2 data groups of 1 SAE, one per target L0, x 8 latent shards),
    nothing allocated."""
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "launch/train.py"),
            f"--config={REPO}/configs/sweep_gemma3.py:model=27b,width=1m,layer=31",
            "--dry_run",
            "--device_memory_gb=95",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "mesh data=2 x model=8 (16 fake cpu devices), sweep=sharded, K=2" in out
    m = re.search(
        r"res width 1048576 \(d_in 5376\): per device state ([\d.]+) GB"
        r".*= peak ([\d.]+) GB -> fits 95 GB",
        out,
    )
    assert m, out[-2000:]
    d, w, k_local, shards = 5376, 2**20, 1, 8
    # params + Adam nu (W_enc, W_dec, b_enc, threshold split 8 ways; b_dec whole), last_fired, counters
    per_sae = 2 * (2 * d * w + 2 * w) // shards * 4 + 2 * d * 4 + w // shards * 4 + 4 + 4 + 4
    assert abs(float(m.group(1)) - k_local * per_sae / 1e9) < 0.01
    assert float(m.group(1)) < float(m.group(2)) < 95
