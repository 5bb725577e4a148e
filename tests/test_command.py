"""The ``gemmascope`` console command (gemmascope/commands/): the installed script lists every
subcommand, each subcommand takes the same flags as its ``launch/`` script, and the subcommands
run the toy end to end: train, export, plot-metrics, and generate's refusal of a source without
a store; verify-store on a small store, steer on the embedded LM.

Every run is a subprocess: absl flags are one global registry and subcommands declare the same
flag names, so one process runs one subcommand (as the installed command does).
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gemmascope.commands import COMMANDS
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import model as sae_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
# the toy at the size of tests/test_habits.py's tiny_config: 2 SAEs of width 32 on d_in 8, 24 steps
TINY = [
    "--config.toy.d_in=8",
    "--config.toy.n_features=16",
    "--config.toy.mean_active=2.0",
    "--config.widths=32",
    "--config.lambdas=0.01,0.1",
    "--config.batch_size=64",
    "--config.num_tokens=1536",
    "--config.lr_warmup_steps=4",
    "--config.lambda_warmup_steps=8",
    "--config.norm_sample_rows=512",
    "--config.eval_rows=512",
    "--config.log_every=6",
    "--config.checkpoint_every=100",
]


def script() -> str:
    """The installed console script beside this interpreter (``pip install -e .`` puts it there)."""
    path = shutil.which("gemmascope", path=os.path.dirname(sys.executable)) or shutil.which("gemmascope")
    if path is None:
        pytest.skip("the gemmascope script is not installed (pip install -e .)")
    return path


def start(*args):
    """``gemmascope <args>`` through the entry module (as the installed script calls it), started."""
    return subprocess.Popen(
        [sys.executable, "-c", "from gemmascope.commands import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def finish(p, ok=True, timeout=300):
    """``(returncode, stdout, stderr)`` of a started run; with ``ok``, asserting it succeeded."""
    out, err = p.communicate(timeout=timeout)
    if ok:
        assert p.returncode == 0, (p.args[3:], out[-2000:], err[-3000:])
    return p.returncode, out, err


def gs(*args, ok=True):
    return finish(start(*args), ok=ok)


def test_installed_script_lists_every_subcommand():
    r = subprocess.run([script(), "--help"], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0 and r.stderr == ""
    listed = re.findall(r"^  (\S+)  ", r.stdout, re.M)
    assert listed == list(COMMANDS)
    for name in ("generate", "train", "evaluate", "export", "analyze", "steer", "verify-store"):
        assert name in listed
    r = subprocess.run([script(), "trian"], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "unknown command 'trian'; did you mean train?" in r.stderr
    r = subprocess.run([script()], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("usage: gemmascope <command>")


@pytest.mark.parametrize("name,launch", [("train", "train.py"), ("export", "export.py")])
def test_subcommand_help_is_the_launch_scripts(name, launch):
    """The same docstring and flags (names, help, defaults) from the command and the wrapper."""
    rc, mine, _ = gs(name, "--help", ok=False)
    assert rc == 1  # absl's exit status after --help
    theirs = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", launch), "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    ).stdout
    flags = lambda text: re.findall(r"^  --(?:\[no\])?(\w+):", text, re.M)  # noqa: E731
    assert flags(mine) and flags(mine) == flags(theirs)
    assert mine.replace(f"gemmascope {name}:", "X:") == theirs.replace(f"{os.path.join(REPO, 'launch', launch)}:", "X:")


def random_lm_sae(folder):
    """A random res SAE at layer 3 of the embedded SmolLM2 (d_model 576), for steer."""
    rng = np.random.default_rng(0)
    d, n = 576, 16
    params = {
        "W_enc": rng.standard_normal((d, n)).astype(np.float32) * 0.05,
        "W_dec": rng.standard_normal((n, d)).astype(np.float32),
        "b_enc": np.zeros(n, np.float32),
        "b_dec": np.zeros(d, np.float32),
        "threshold": np.full(n, 0.1, np.float32),
    }
    sae_io.save_params(os.path.join(folder, "params.npz"), params, {"site": "res", "layer": 3, "d_in": d, "d_sae": n})
    return folder


def small_store(folder):
    from gemmascope.data import store as st

    with st.ActivationWriter(folder, {"res_L3": 8}, {"model": "toy"}, chunk_rows=4, chunks_per_shard=2) as w:
        for b in range(3):
            w.write_batch(b, {"res_L3": np.full((5 + b, 8), b, np.float32)})
    return folder


def test_subcommands_end_to_end(tmp_path):
    """train the toy, then export, plot-metrics and generate on its workdir; steer (the embedded
    LM and a random SAE: the toy has no LM) and verify-store beside them. Runs that do not depend
    on each other go in parallel (each pays JAX's start-up and a compile)."""
    wd, store = str(tmp_path / "toy"), small_store(str(tmp_path / "store"))
    train = start("train", "--config=configs/toy.py", f"--workdir={wd}", *TINY)
    sae = random_lm_sae(str(tmp_path / "sae"))
    steer = start("steer", f"--sae={sae}", "--latent=1", "--alphas=0,50", "--max_new_tokens=2")
    verify = start("verify-store", f"--store={store}")

    # steer: alpha 0 is the plain greedy text, a large alpha on one latent changes it
    lines = [ln for ln in finish(steer)[1].splitlines() if ln.startswith("alpha=")]
    assert [ln.split(":")[0] for ln in lines] == ["alpha=0", "alpha=50"] and lines[0][8:] != lines[1][9:]
    assert "ok" in finish(verify)[1].lower()
    assert "step 24/24" in finish(train)[1]
    with open(os.path.join(wd, "config.json")) as fh:
        assert json.load(fh)["toy"]["d_in"] == 8  # the overrides reached the config
    saes = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(wd, "saes", "**", "params.npz"), recursive=True))
    assert len(saes) == 2

    from gemmascope.data import store as st

    os.remove(os.path.join(store, st.COMPLETE))
    runs = {
        "export": start("export", f"--sae={saes[0]}", "--layout=sae_lens", f"--out={tmp_path / 'sl'}"),
        "plot": start("plot-metrics", f"--workdir={wd}", f"--out={tmp_path / 'curves'}"),
        "generate": start("generate", "--config=configs/toy.py", f"--workdir={wd}"),
        "verify": start("verify-store", f"--store={store}"),
    }
    finish(runs["export"])  # our file as SAELens's layout, read back with the same codes
    x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(sae_model.encode(sae_io.load_params(str(tmp_path / "sl")), x)),
        np.asarray(sae_model.encode(sae_io.load_params(saes[0]), x)),
        rtol=1e-5,
        atol=1e-5,
    )
    pngs = finish(runs["plot"])[1].split()
    assert pngs == [str(tmp_path / "curves" / "toy_layer0_width32.png")] and os.path.getsize(pngs[0]) > 1000
    rc, _, err = finish(runs["generate"], ok=False)  # the toy is synthetic: there is no store to write
    assert rc != 0 and "the toy source needs no activation store" in err
    rc, out, _ = finish(runs["verify"], ok=False)  # a store missing its completion marker
    assert rc == 1, out
