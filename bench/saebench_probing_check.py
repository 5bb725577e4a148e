"""sae-bench 0.6.0's sparse probing on inputs written by ``bench/bench_probing.py``.

    python bench/saebench_probing_check.py IN.npz OUT.json    # in sae-bench's venv (no gemmascope)

Reads token-level activations ``acts [n, T, d]`` (zero at every position that is not real text, as
sae-bench's ``get_all_llm_activations`` leaves them), an exported JumpReLU SAE (raw units, no
pre-encoder bias) and the tasks, then runs sae-bench's own code:

* pooling: ``create_meaned_model_activations`` (raw) and ``get_sae_meaned_activations`` with the SAE
  loaded into SAELens's ``JumpReLUSAE`` (``apply_b_dec_to_input=False``);
* ``same_tasks``: for each of our tasks (the same train/test texts and labels), the top-k mask
  ``get_top_k_mean_diff_mask``, ``apply_topk_mask_reduce_dim`` and ``train_sklearn_probe`` (its
  LogisticRegression, C = 1, max_iter 1000) on sae-bench's pooled features;
* ``own_sampling``: ``train_probe_on_activations`` on ``{class: pooled texts}`` per side, with its
  own negative sampling (``torch.manual_seed(seed)`` for five seeds), at every k, and its
  all-dimension probe (``use_sklearn=False``, batch 250, 100 epochs, lr 1e-2, as its ``main.py``
  runs it).

Writes the accuracies and the largest pooling differences to OUT.json.
"""

import json
import sys

import numpy as np
import sae_bench.evals.sparse_probing.probe_training as pt
import sae_bench.sae_bench_utils.activation_collection as ac

SEEDS = (42, 43, 44, 45, 46)  # sae-bench's own negative sampling, five draws
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig


def main(inp: str, out: str) -> None:
    z = np.load(inp)
    meta = json.loads(str(z["meta"]))
    acts = torch.from_numpy(z["acts"])
    w = {k: torch.from_numpy(z[k]) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    cfg = JumpReLUSAEConfig(d_in=w["W_enc"].shape[0], d_sae=w["W_enc"].shape[1], apply_b_dec_to_input=False)
    sae = JumpReLUSAE(cfg)
    sae.load_state_dict(w)
    torch.manual_seed(0)
    raw = ac.create_meaned_model_activations({"all": acts})["all"]
    codes = ac.get_sae_meaned_activations({"all": acts}, sae, 125)["all"]
    res = {
        "pool_max_abs_diff": {
            "llm": float((raw - torch.from_numpy(z["ours_raw"])).abs().max()),
            "sae": float((codes - torch.from_numpy(z["ours_sae"])).abs().max()),
        },
        "pool_max_abs": {"llm": float(raw.abs().max()), "sae": float(codes.abs().max())},
    }
    feats = {"llm": raw, "sae": codes}
    same = {kind: {} for kind in feats}
    for i, name in enumerate(meta["tasks"]):
        tr, te = z[f"task{i}_train"], z[f"task{i}_test"]
        ytr = torch.from_numpy(z[f"task{i}_train_y"]).to(torch.int)
        yte = torch.from_numpy(z[f"task{i}_test_y"]).to(torch.int)
        for kind, f in feats.items():
            row = {}
            for k in meta["k_values"]:
                xtr, xte = f[tr], f[te]
                mask = pt.get_top_k_mean_diff_mask(xtr, ytr, k)
                xtr, xte = pt.apply_topk_mask_reduce_dim(xtr, mask), pt.apply_topk_mask_reduce_dim(xte, mask)
                _, acc = pt.train_sklearn_probe(xtr, ytr, xte, yte)
                row[f"top_{k}"] = float(acc)
            same[kind][name] = row
    res["same_tasks"] = same
    own = {kind: {} for kind in feats}  # {kind: {k: {class: [accuracy per seed]}}}
    for kind, f in feats.items():
        train = {c: f[z[f"class_train_{c}"]] for c in meta["tasks"]}
        test = {c: f[z[f"class_test_{c}"]] for c in meta["tasks"]}
        for seed in SEEDS:
            for k in [*meta["k_values"], None]:
                torch.manual_seed(seed)
                if k is None:
                    kw = dict(use_sklearn=False, batch_size=250, epochs=100, lr=1e-2)
                    _, accs = pt.train_probe_on_activations(train, test, select_top_k=None, **kw)
                else:
                    _, accs = pt.train_probe_on_activations(train, test, select_top_k=k)
                row = own[kind].setdefault("all" if k is None else f"top_{k}", {})
                for c, a in accs.items():
                    row.setdefault(c, []).append(float(a))
    res["own_sampling"] = own
    res["own_sampling_seeds"] = list(SEEDS)
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
