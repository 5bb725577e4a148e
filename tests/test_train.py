"""The sweep trainer: config validation, NaN stop, bitwise resume after a real kill, toy end to end."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gemmascope import config as config_lib
from gemmascope.train.loop import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**over):
    c = config_lib.base_config()
    c.sites, c.layers, c.widths = ("toy",), (0,), (32,)
    c.lambdas = (0.01, 0.1)
    c.source = "toy"
    c.toy.d_in, c.toy.n_features, c.toy.mean_active = 8, 16, 2.0
    c.batch_size = 64
    c.num_tokens = 64 * 60
    c.lr, c.lr_warmup_steps, c.lambda_warmup_steps = 3e-3, 10, 20
    c.sae.threshold_param = "direct"
    c.norm_sample_rows = c.eval_rows = 1024
    c.log_every, c.checkpoint_every = 10, 20
    for k, v in over.items():
        c[k] = v
    return config_lib.lock(c)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("lambdas", (0.1, -0.5), "config.lambdas: every sparsity coefficient must be a finite number >= 0, got -0.5"),
        ("widths", (0,), "config.widths: every width must be a positive integer, got 0"),
        ("widths", (16.5,), "config.widths: every width must be a positive integer, got 16.5"),
        ("batch_size", -4, "config.batch_size: must be a positive integer, got -4"),
        ("lr", 0.0, "config.lr: must be a number > 0"),
        ("source", "hub", "config.source: must be 'toy', 'store' or 'online'"),
        ("sites", ("res",), "config.sites: the toy source has the single site 'toy'"),
    ],
)
def test_invalid_values_name_the_field(field, value, message):
    c = tiny_config()
    with c.unlocked():
        c[field] = value
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c)
    assert message in str(e.value)


def test_nested_invalid_and_unknown_fields():
    c = tiny_config()
    c.sae.threshold_param = "sqrt"
    with pytest.raises(config_lib.ConfigError, match="config.sae.threshold_param"):
        config_lib.validate(c)
    with pytest.raises(AttributeError, match="lamdas"):  # locked config: typo'd fields are refused
        tiny_config().lamdas = (1.0,)
    c = tiny_config()
    with c.unlocked():
        c.sae.bogus = 1
    with pytest.raises(config_lib.ConfigError, match=r"config.sae.bogus: unknown field"):
        config_lib.validate(c)


def test_parse_arg_and_widths():
    a = config_lib.parse_arg("layer=12,site=att,width=16k", layer=0, site="res", width=1)
    assert (a.layer, a.site, a.width) == (12, "att", 16384)
    assert config_lib.parse_width("1m") == 2**20
    with pytest.raises(config_lib.ConfigError, match="unknown key"):
        config_lib.parse_arg("layr=3", layer=0)


def test_cli_rejects_bad_override_before_any_compute(tmp_path):
    """launch/train.py names the field and exits before JAX is even imported."""
    wd = tmp_path / "w"
    cmd = [sys.executable, os.path.join(REPO, "launch/train.py"), f"--config={REPO}/configs/toy.py", f"--workdir={wd}"]
    r = subprocess.run(cmd + ["--config.lambdas=0.1,-1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "config.lambdas" in r.stderr + r.stdout
    r = subprocess.run(cmd + ["--config.lamdas=0.1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "lamdas" in r.stderr + r.stdout
    assert not wd.exists()  # nothing was started


def test_nan_stops_the_run_naming_step_and_sae(tmp_path, monkeypatch):
    from gemmascope.data.toy import ToySource
    from gemmascope.train import loop

    real_batch = ToySource.batch

    def poisoned(self, index):  # unit-test mock: batch 6 (the 7th step) carries a NaN
        x = real_batch(self, index)
        if index == 6:
            x[3, 2] = np.nan
        return x

    monkeypatch.setattr(ToySource, "batch", poisoned)
    with pytest.raises(loop.NonFiniteError, match=r"at step 7 for SAE 0 \(lambda=0.01\)"):
        loop.train_and_evaluate(tiny_config(), str(tmp_path / "w"), log=lambda *a: None)


def _final_params(workdir):
    out = {}
    for p in sorted(glob.glob(os.path.join(workdir, "saes", "**", "params.npz"), recursive=True)):
        meta = json.load(open(os.path.join(os.path.dirname(p), "metadata.json")))
        with np.load(p) as z:
            out[meta["sparsity_coefficient"]] = {k: z[k] for k in z.files}
    return out


def test_kill_and_resume_is_bitwise_identical(tmp_path):
    """SIGKILL a real training process after its first checkpoint, rerun the same command: the
    exported parameters equal those of an uninterrupted run bit for bit."""
    from gemmascope.train import loop

    ref_dir = str(tmp_path / "ref")
    loop.train_and_evaluate(
        tiny_config(num_tokens=64 * 400, checkpoint_every=50, log_every=50), ref_dir, log=lambda *a: None
    )
    ref = _final_params(ref_dir)
    assert len(ref) == 2

    wd = str(tmp_path / "killed")
    script = (
        f"import sys; sys.path.insert(0, {REPO!r})\n"
        "from tests.test_train import tiny_config\n"
        "from gemmascope.train.loop import train_and_evaluate\n"
        f"train_and_evaluate(tiny_config(num_tokens=64 * 400, checkpoint_every=50, log_every=50), {wd!r})\n"
    )
    ckpt_dir = os.path.join(wd, "runs", "toy_layer0_width32", "checkpoints")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [d for d in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []) if d.isdigit()]
        if done or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not glob.glob(os.path.join(wd, "saes", "**", "params.npz"), recursive=True), "killed before export"
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    assert steps and steps[-1] < 400

    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from step {steps[-1]}" in r.stdout
    got = _final_params(wd)
    assert sorted(got) == sorted(ref)
    for lam in ref:
        for k in ref[lam]:
            np.testing.assert_array_equal(got[lam][k], ref[lam][k], err_msg=f"lambda={lam} {k}")
    # A second rerun finds the location finished and changes nothing.
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "already trained and exported" in r.stdout


def test_toy_end_to_end(tmp_path):
    """The acceptance command: L0 falls as lambda rises, one SAE recovers >= 90% of the ground truth."""
    from gemmascope.data.toy import recovery_fraction

    wd = tmp_path / "toy"
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch/train.py"), f"--config={REPO}/configs/toy.py", f"--workdir={wd}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tok/s" in r.stdout and "ETA" in r.stdout
    feats = np.load(wd / "toy_features.npy")
    assert feats.shape == (128, 64)
    metas = [json.load(open(p)) for p in glob.glob(str(wd / "saes/**/metadata.json"), recursive=True)]
    metas.sort(key=lambda m: m["sparsity_coefficient"])
    assert len(metas) == 4
    l0s = [m["l0"] for m in metas]
    assert all(a > b for a, b in zip(l0s, l0s[1:])), l0s
    for m in metas:
        for key in (
            "architecture",
            "d_in",
            "d_sae",
            "site",
            "layer",
            "model",
            "sparsity_coefficient",
            "normalisation_constant",
            "tokens_trained",
            "l0",
            "fvu",
        ):
            assert key in m
    best = max(
        recovery_fraction(feats, np.load(os.path.join(os.path.dirname(p), "params.npz"))["W_dec"])
        for p in glob.glob(str(wd / "saes/**/metadata.json"), recursive=True)
    )
    assert best >= 0.9, best
    rows = [json.loads(line) for line in open(wd / "metrics.jsonl")]
    assert {"loss", "mse", "l0", "fvu", "dead_fraction", "threshold_mean", "threshold_min", "threshold_max"} <= set(
        rows[0]
    )


def test_a_run_killed_between_its_last_checkpoint_and_the_export_resumes_to_the_same_files(tmp_path):
    """The last checkpoint is written before the export: a rerun restores at the final step, saves
    nothing new and exports exactly what the uninterrupted run exported."""
    c = tiny_config(tensorboard=False)
    wd = str(tmp_path / "wd")
    first = train_and_evaluate(c, wd, log=lambda *a: None)
    want = {r["path"]: dict(np.load(r["path"])) for r in first}
    for r in first:  # as if killed before the export: no files, no marker
        os.remove(r["path"])
    (marker,) = glob.glob(os.path.join(wd, "runs", "*", "exported.json"))
    os.remove(marker)
    logs = []
    again = train_and_evaluate(c, wd, log=logs.append)
    assert any("resumed from step 60" in line for line in logs), logs
    assert sorted(r["path"] for r in again) == sorted(want)
    for r in again:
        got = dict(np.load(r["path"]))
        assert sorted(got) == sorted(want[r["path"]])
        for k in got:
            np.testing.assert_array_equal(got[k], want[r["path"]][k], err_msg=k)
