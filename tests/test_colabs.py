"""The notebooks under colabs/ run top to bottom (nbclient, a fresh ipykernel) and produce what
they promise: a trained tiny SAE, per-token top latents, a dashboard, steered text; a sweep with
metrics.jsonl, exported SAEs whose L0 falls as lambda rises, and a delta LM loss."""

from __future__ import annotations

import glob
import json
import os
import re
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(REPO, "colabs")


def _run(name: str, workdir: str, monkeypatch) -> tuple[str, float]:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("GEMMASCOPE_WORKDIR", workdir)
    monkeypatch.delenv("GEMMASCOPE_SAE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    nb = nbformat.read(os.path.join(COLABS, name), as_version=4)
    t0 = time.time()
    # Raises CellExecutionError (with the cell and the traceback) on the first failing cell.
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": COLABS}}).execute()
    text = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert cell.get("execution_count"), f"{name}: a code cell did not run"
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{name}: {out.get('ename')}: {out.get('evalue')}"
            text.append(
                out.get("text", "")
                if out.get("output_type") == "stream"
                else str(out.get("data", {}).get("text/plain", ""))
            )
    out = "\n".join(text)
    # the first code cell: installs when missing (here the package is importable) and prints the devices
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert 'find_spec("gemmascope") is None' in first.source and "[tpu]" in first.source
    assert re.search(r"jax \S+ devices: \[\w*Device", out), out[:500]
    assert not any("sys.path" in c.source for c in nb.cells)  # configs come from the installed package
    return out, time.time() - t0


def test_tutorial_runs_and_builds_a_dashboard(tmp_path, monkeypatch):
    out, seconds = _run("tutorial.ipynb", str(tmp_path), monkeypatch)
    # 1. it trained and loaded its own SAE, and the "released file" copy loads identically
    saes = glob.glob(str(tmp_path / "train" / "saes" / "res" / "layer_3" / "*" / "*" / "params.npz"))
    assert len(saes) == 1
    assert "jumprelu SAE on res layer 3" in out
    assert "['W_dec', 'W_enc', 'b_dec', 'b_enc', 'threshold'] True" in out
    # 2. a per-token table: one line per text token with its L0 and top latents
    lines = [ln for ln in out.splitlines() if re.match(r"\s*'.*'\s+\d+\s", ln)]
    assert len(lines) >= 20 and any("' cat'" in ln for ln in lines)
    assert any(re.search(r"\d+ \(\d+\.\d\)", ln) for ln in lines)  # "latent (activation)" entries
    # 3. the dashboard: an index and five latent pages
    dash = tmp_path / "dashboard"
    assert (dash / "index.html").exists()
    summary = json.load(open(dash / "summary.json"))
    assert summary["n_latents"] == 5 and len(glob.glob(str(dash / "latents" / "*.html"))) == 5
    assert summary["n_tokens"] >= 4000 and sum(summary["class_counts"].values()) == 5
    # 4. steering printed the plain and the steered continuation, and they differ
    steer = re.findall(r"alpha=\s*([\d.]+): My favourite food is(.*)", out)
    assert len(steer) == 2 and float(steer[0][0]) == 0.0 and float(steer[1][0]) > 0
    assert steer[0][1] != steer[1][1]
    print(f"tutorial.ipynb ran in {seconds:.0f}s")


def test_training_walkthrough_runs(tmp_path, monkeypatch):
    out, seconds = _run("training_walkthrough.ipynb", str(tmp_path), monkeypatch)
    wd = tmp_path / "sweep"
    rows = [json.loads(x) for x in open(wd / "metrics.jsonl")]
    assert {r["sae"] for r in rows} == {0, 1, 2} and max(r["step"] for r in rows) == 40
    metas = sorted(
        (json.load(open(p)) for p in glob.glob(str(wd / "saes" / "**" / "metadata.json"), recursive=True)),
        key=lambda m: m["sparsity_coefficient"],
    )
    assert len(metas) == 3
    l0 = [m["l0"] for m in metas]
    assert l0[0] > l0[1] > l0[2] > 0, l0  # sparser with larger lambda
    curves = glob.glob(str(wd / "curves" / "*.png"))
    assert len(curves) == 1 and open(curves[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    runs = sorted(os.listdir(wd / "tensorboard" / rows[0]["location"]))
    assert len(runs) == 3 and all(
        glob.glob(str(wd / "tensorboard" / rows[0]["location"] / r / "events.out.tfevents.*")) for r in runs
    ), runs
    # the table printed by the notebook lists the three SAEs with the L0 of their metadata
    for m in metas:
        assert re.search(rf"{m['sparsity_coefficient']:8g}\s+{m['l0']:7.1f}", out)
    m = re.search(r"delta loss (-?[\d.]+) nats \(clean ([\d.]+), SAE ([\d.]+), zero-ablation ([\d.]+)\)", out)
    assert m, out[-2000:]
    delta, clean, sae, zero = map(float, m.groups())
    assert clean < sae < zero and delta == pytest.approx(sae - clean, abs=2e-3)
    print(f"training_walkthrough.ipynb ran in {seconds:.0f}s")
