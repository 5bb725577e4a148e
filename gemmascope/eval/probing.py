"""Sparse probing: how well k latents of an SAE, against k dimensions of the raw activations,
linearly predict a label of a whole text (SAEBench's ``sparse_probing`` method, Gurnee et al.'s
k-sparse probes).

Method (SAEBench 0.6.0's, re-implemented here; ``bench/bench_probing.py`` checks it against
sae-bench's own code on the same inputs):

* **Features per text**: the text is tokenised without special tokens, cut to
  ``context_length - 1`` tokens and run as ``[BOS] + tokens``; the site's activations are
  mean-pooled over its real-text tokens (never BOS, EOS or padding, nor the norm outliers the SAEs
  were never trained on: :func:`gemmascope.data.sites.keep_mask`). SAE features are the SAE's codes
  of each token, mean-pooled over the same tokens (encode, then pool: not the code of the mean).
* **Tasks**: one binary one-vs-rest task per class. Positives: the class's texts in a split;
  negatives: ``ceil(n_pos / (n_classes - 1))`` texts drawn from every other class, of which
  ``n_pos`` are kept at random, so both labels have ``n_pos`` texts.
* **Splits by document**: a text's side (train or test) is fixed by a keyed hash of its
  whitespace-normalised text (:func:`split_of`), so identical texts never sit on both sides and
  the split is the same on every machine.
* **Probe**: the ``k`` dimensions with the largest ``|mean(train positives) - mean(train
  negatives)|`` are kept; an L2-regularised logistic regression (scikit-learn's objective, ``C =
  1``, intercept unregularised) is fitted on them, on the unscaled features, by Newton's method to
  convergence; test accuracy is reported. ``k = None`` (all dimensions, SAEBench's
  ``llm_test_accuracy`` / ``sae_test_accuracy``) fits on z-scored features by L-BFGS instead (SAEBench
  trains that one with AdamW and early stopping on the test set: the two differ there).

Labels for the embedded corpus: the topic file each text comes from
(:func:`gemmascope.data.topics.fortune_topics`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.special

from gemmascope.data import sites as sites_lib
from gemmascope.data import text as text_lib
from gemmascope.data.topics import fortune_topics, normalise
from gemmascope.sae.files import model as sae_model


@dataclasses.dataclass(frozen=True)
class ProbingSettings:
    """What a sparse-probing run does. ``k_values``: probe sizes (``None`` in the tuple: all
    dimensions); ``n_train`` / ``n_test``: at most this many positive texts per task and split (as
    many negatives); ``min_train`` / ``min_test``: a class with fewer texts on a side is no task;
    ``topics``: the classes (default: every topic of the corpus with enough texts)."""

    k_values: tuple[int | None, ...] = (1, 2, 5, 10, 20, 50, None)
    n_train: int = 300
    n_test: int = 100
    min_train: int = 300
    min_test: int = 100
    test_fraction: float = 0.25
    topics: tuple[str, ...] | None = None
    context_length: int = 128
    batch_texts: int = 32
    C: float = 1.0
    seed: int = 42
    salt: str = "gemmascope-probing"


# ----------------------------------------------------------------------------- labels and splits


def split_of(texts: Sequence[str], test_fraction: float, salt: str) -> np.ndarray:
    """``bool [n]``: True for the test side. A keyed hash of the normalised text decides, so a
    document (and any copy of it) is on one side only, on every machine."""
    return np.array([text_lib.doc_hash_unit(normalise(t), salt) < test_fraction for t in texts], bool)


@dataclasses.dataclass
class Task:
    """One binary task: texts ``train [n_tr]`` / ``test [n_te]`` (indices into the texts) with
    labels ``train_y`` / ``test_y`` (1: the class ``name``, 0: another class), balanced."""

    name: str
    train: np.ndarray
    train_y: np.ndarray
    test: np.ndarray
    test_y: np.ndarray


def make_tasks(labels: np.ndarray, names: Sequence[str], is_test: np.ndarray, settings: ProbingSettings) -> list[Task]:
    """One-vs-rest tasks over the classes with at least ``min_train`` / ``min_test`` texts on each
    side (or ``settings.topics``, which must all qualify). Negatives come evenly from the other
    chosen classes (module doc). Deterministic in ``settings.seed``."""
    rng = np.random.default_rng(settings.seed)
    sides = {False: (settings.n_train, settings.min_train), True: (settings.n_test, settings.min_test)}
    counts = {c: {s: int(np.sum((labels == c) & (is_test == s))) for s in sides} for c in range(len(names))}
    ok = [c for c in counts if all(counts[c][s] >= sides[s][1] for s in sides)]
    if settings.topics is not None:
        unknown = [t for t in settings.topics if t not in names]
        if unknown:
            raise ValueError(f"probing topics {unknown} unknown; the corpus has {list(names)}")
        short = [t for t in settings.topics if names.index(t) not in ok]
        if short:
            raise ValueError(
                f"probing topics {short} have fewer than {settings.min_train} train / {settings.min_test} test "
                f"texts: {[(t, counts[names.index(t)]) for t in short]}"
            )
        ok = [names.index(t) for t in settings.topics]
    if len(ok) < 2:
        raise ValueError(f"sparse probing needs two classes with enough texts, found {[names[c] for c in ok]}")
    pools = {s: {c: rng.permutation(np.flatnonzero((labels == c) & (is_test == s))) for c in ok} for s in sides}
    pools = {s: {c: p[: sides[s][0]] for c, p in pools[s].items()} for s in sides}
    tasks = []
    for c in ok:
        parts = {}
        for s in sides:
            pos = pools[s][c]
            others = [o for o in ok if o != c]
            per = math.ceil(len(pos) / len(others))
            neg = np.concatenate([rng.permutation(pools[s][o])[:per] for o in others])
            neg = rng.permutation(neg)[: len(pos)]
            if len(neg) < len(pos):
                raise ValueError(f"task {names[c]!r}: {len(neg)} negatives for {len(pos)} positives")
            idx = np.concatenate([pos, neg])
            y = np.concatenate([np.ones(len(pos), np.int32), np.zeros(len(neg), np.int32)])
            order = rng.permutation(len(idx))
            parts[s] = (idx[order], y[order])
        tasks.append(Task(names[c], parts[False][0], parts[False][1], parts[True][0], parts[True][1]))
    return tasks


# ----------------------------------------------------------------------------- probes


def top_k_by_mean_diff(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """``[k]`` indices of the columns of ``x [n, d]`` with the largest ``|mean over y=1 - mean over
    y=0|``, largest first (ties: the lower index)."""
    diff = np.abs(x[y == 1].mean(0, dtype=np.float64) - x[y == 0].mean(0, dtype=np.float64))
    return np.argsort(-diff, kind="stable")[:k]


def _loss_grad(theta: np.ndarray, x: np.ndarray, t: np.ndarray, C: float) -> tuple[float, np.ndarray]:
    w, b = theta[:-1], theta[-1]
    z = x @ w + b
    loss = 0.5 * w @ w + C * np.sum(np.logaddexp(0.0, z) - t * z)
    r = C * (scipy.special.expit(z) - t)
    return float(loss), np.concatenate([w + x.T @ r, [r.sum()]])


def fit_logistic(x: np.ndarray, y: np.ndarray, C: float = 1.0, tol: float = 1e-14, max_iter: int = 100) -> np.ndarray:
    """``theta [d + 1]`` (weights, then the intercept) minimising scikit-learn's L2 logistic
    objective ``0.5 ||w||^2 + C sum_i log(1 + exp(-s_i (x_i w + b)))`` (``s_i = +-1``, intercept
    unpenalised) for ``x [n, d]``, ``y [n]`` in {0, 1}.

    Newton's method with backtracking, in float64: the objective is strictly convex in ``w`` and
    Newton steps do not care how the features are scaled (raw residual dimensions run from 0.01 to
    thousands), so it converges to the optimum itself rather than to a tolerance of a first-order
    solver. Its cost is ``O(n d^2 + d^3)`` per step: meant for small ``d`` (k-sparse probes);
    :func:`fit_logistic_lbfgs` fits all dimensions."""
    x = np.asarray(x, np.float64)
    t = np.asarray(y, np.float64)
    xa = np.concatenate([x, np.ones((len(x), 1))], 1)
    theta = np.zeros(xa.shape[1])
    ridge = np.ones(xa.shape[1])
    ridge[-1] = 1e-12  # the intercept is unpenalised; this only keeps the Hessian invertible
    loss, g = _loss_grad(theta, x, t, C)
    for _ in range(max_iter):
        z = xa @ theta
        p = scipy.special.expit(z)
        h = (xa * (C * p * (1 - p))[:, None]).T @ xa + np.diag(ridge)
        step = np.linalg.solve(h, g)
        decrement = float(g @ step)
        if decrement / 2 <= tol * max(1.0, abs(loss)):
            break
        a = 1.0
        while True:
            new_loss, new_g = _loss_grad(theta - a * step, x, t, C)
            if new_loss <= loss - 0.25 * a * decrement:
                break
            a *= 0.5
            if a < 1e-10:  # no decrease left above round-off: at the optimum
                return theta
        theta, loss, g = theta - a * step, new_loss, new_g
    return theta


def fit_logistic_lbfgs(x: np.ndarray, y: np.ndarray, C: float = 1.0) -> np.ndarray:
    """``theta [d + 1]``: the objective of :func:`fit_logistic` minimised by L-BFGS (scipy),
    for probes on every dimension (``d`` in the thousands), where Newton's ``d x d`` system is too
    dear. Callers standardise ``x`` first (:func:`probe_task`)."""
    x = np.asarray(x, np.float64)
    t = np.asarray(y, np.float64)
    res = scipy.optimize.minimize(
        _loss_grad, np.zeros(x.shape[1] + 1), args=(x, t, C), jac=True, method="L-BFGS-B", options={"maxiter": 2000}
    )
    return res.x


def accuracy(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows of ``x [n, d]`` whose predicted label (``x w + b > 0``) equals ``y [n]``."""
    pred = (np.asarray(x, np.float64) @ theta[:-1] + theta[-1]) > 0
    return float(np.mean(pred == (np.asarray(y) == 1)))


def probe_task(features: np.ndarray, task: Task, k: int | None, C: float = 1.0) -> tuple[float, list[int]]:
    """``(test accuracy, chosen dimensions)`` of one probe on ``features [n_texts, d]``: the
    ``k`` dimensions by difference of class means on the train side and a Newton fit; ``k=None``:
    every dimension, z-scored with the train side's statistics, fitted by L-BFGS (no dimensions
    returned)."""
    xtr, xte = features[task.train], features[task.test]
    if k is None:
        mu, sd = xtr.mean(0), xtr.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        theta = fit_logistic_lbfgs((xtr - mu) / sd, task.train_y, C)
        return accuracy(theta, (xte - mu) / sd, task.test_y), []
    dims = top_k_by_mean_diff(xtr, task.train_y, k)
    theta = fit_logistic(xtr[:, dims], task.train_y, C)
    return accuracy(theta, xte[:, dims], task.test_y), [int(i) for i in dims]


def k_name(k: int | None) -> str:
    """``"top_5"`` for k = 5, ``"all"`` for every dimension."""
    return "all" if k is None else f"top_{k}"


def probe_features(features: np.ndarray, tasks: Sequence[Task], settings: ProbingSettings) -> dict[str, Any]:
    """Every task at every ``settings.k_values`` on ``features [n_texts, d]``:
    ``{"tasks": {name: {"top_1": acc, ..., "all": acc, "dims": {"top_1": [i], ...}}},
    "mean": {"top_1": mean acc over tasks, ...}}``."""
    out: dict[str, Any] = {"tasks": {}}
    for task in tasks:
        row: dict[str, Any] = {"dims": {}}
        for k in settings.k_values:
            if k is not None and k > features.shape[1]:
                continue
            acc, dims = probe_task(features, task, k, settings.C)
            row[k_name(k)] = acc
            if dims:
                row["dims"][k_name(k)] = dims
        out["tasks"][task.name] = row
    names = [k_name(k) for k in settings.k_values if k is None or k <= features.shape[1]]
    out["mean"] = {n: float(np.mean([r[n] for r in out["tasks"].values()])) for n in names}
    return out


# ----------------------------------------------------------------------------- features per text


def text_batches(tokenizer, texts: Sequence[str], lm_cfg, context_length: int, batch: int):
    """``(indices [b], tokens [batch, T] int32, mask [batch, T] bool)``: texts as ``[BOS] + the
    first context_length - 1 tokens``, grouped by length (T the batch's longest, rounded up to a
    power of two, so few shapes compile) and padded to ``batch`` rows with fully masked ones."""
    ids = [list(i)[: context_length - 1] for i in text_lib._encode_batches(tokenizer, texts)]
    order = np.argsort([len(i) for i in ids], kind="stable")
    bos, eos, pad = lm_cfg.bos_id, lm_cfg.eos_id, lm_cfg.pad_id
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        longest = 1 + max(len(ids[i]) for i in idx)
        T = min(1 << (longest - 1).bit_length(), context_length)
        toks = np.full((len(idx), T), pad, np.int32)
        toks[:, 0] = bos
        for row, i in enumerate(idx):
            toks[row, 1 : 1 + len(ids[i])] = ids[i]
        real = np.arange(T)[None, :] < 1 + np.array([len(ids[i]) for i in idx])[:, None]
        mask = real & text_lib.special_mask(toks, (bos, eos, pad))
        yield (idx, *sites_lib.pad_batch(toks, mask, batch, bos, pad))


@jax.jit
def _pool(act: jax.Array, keep: jax.Array, saes: tuple) -> tuple[jax.Array, tuple]:
    """Mean over kept positions of ``act [B, T, d]`` and of each SAE's codes ``[B, T, d_sae]``."""
    w = keep.astype(jnp.float32)
    n = jnp.maximum(w.sum(1, keepdims=True), 1.0)
    return (act * w[..., None]).sum(1) / n, tuple((sae_model.encode(s, act) * w[..., None]).sum(1) / n for s in saes)


def pooled_features(
    lm, texts: Sequence[str], layer: int, site: str, saes: Sequence[dict], settings: ProbingSettings, factor: float
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """``(raw [n, d], [codes [n, d_sae] per SAE], n_tokens [n])``: each text's activations at
    ``(layer, site)`` and each SAE's codes, mean-pooled over its kept tokens (module doc). ``lm``:
    a :class:`gemmascope.lm.loading.LM` (cfg, params, tokenizer); ``factor``: the norm-outlier
    factor the SAEs were trained with. A text with no kept token pools to zeros (``n_tokens`` 0)."""
    jsaes = tuple({n: jnp.asarray(v, jnp.int32 if n == "k" else jnp.float32) for n, v in s.items()} for s in saes)
    raw, codes, n_tok = None, [None] * len(saes), np.zeros(len(texts), np.int64)
    for idx, toks, mask in text_batches(lm.tokenizer, texts, lm.cfg, settings.context_length, settings.batch_texts):
        act, keep = sites_lib.capture(lm, toks, mask, [(layer, site)], factor)[(layer, site)]
        r, cs = jax.device_get(_pool(act, keep, jsaes))
        if raw is None:
            raw = np.zeros((len(texts), r.shape[1]), np.float32)
            codes = [np.zeros((len(texts), c.shape[1]), np.float32) for c in cs]
        raw[idx] = r[: len(idx)]
        for out, c in zip(codes, cs):
            out[idx] = c[: len(idx)]
        n_tok[idx] = np.asarray(keep)[: len(idx)].sum(1)
    return raw, codes, n_tok


# ----------------------------------------------------------------------------- a workdir's SAEs


def result_fields(sae: dict[str, Any], llm: dict[str, Any]) -> dict[str, float]:
    """SAEBench's names for the mean accuracies, as eval.json's top-level fields and table columns:
    ``sae_top_1_test_accuracy`` ..., ``sae_test_accuracy`` (all latents), and ``llm_...`` for the raw
    activations at the SAE's site."""
    out = {}
    for prefix, res in (("sae", sae), ("llm", llm)):
        for n, v in res["mean"].items():
            out[f"{prefix}_test_accuracy" if n == "all" else f"{prefix}_{n}_test_accuracy"] = v
    return out


def probe_workdir(
    config,
    workdir: str,
    settings: ProbingSettings = ProbingSettings(),
    log=print,
    lm=None,
    corpus: tuple[list[str], np.ndarray, tuple[str, ...]] | None = None,
    saes_per_pass: int = 4,
) -> list[dict[str, Any]]:
    """Sparse probing of every SAE under ``workdir/saes`` whose ``eval.json`` (written by
    :func:`gemmascope.eval.evaluate.evaluate_workdir`, which runs first) has no ``sparse_probing``
    yet. Adds to each eval.json ``sparse_probing`` (settings, per-task accuracies and chosen
    latents for the SAE and for the raw activations at its site) and the means under SAEBench's
    names (:func:`result_fields`); rewrites ``workdir/eval/table.{csv,md}`` with them and writes
    ``workdir/eval/probing.md``. Transcoders are probed on the site they read.

    ``lm``: a loaded :class:`gemmascope.lm.loading.LM` (default: ``config.lm.checkpoint``);
    ``corpus``: ``(texts, labels, names)`` (default: :func:`fortune_topics`). Returns every row."""
    from gemmascope.common import write_json_atomic
    from gemmascope.eval import evaluate
    from gemmascope.eval.metrics import read_write_sites
    from gemmascope.sae.files import io as sae_io

    paths = evaluate.find_saes(workdir)
    if not paths:
        raise FileNotFoundError(f"no SAEs under {workdir}/saes to probe (train first: launch/train.py)")
    rows, pending = {}, {}
    for path in paths:
        ej = os.path.join(os.path.dirname(path), "eval.json")
        if not os.path.exists(ej):
            raise FileNotFoundError(f"{ej} missing: sparse probing adds to an evaluated SAE (evaluate_workdir first)")
        with open(ej) as fh:
            rows[path] = json.load(fh)
        if "sparse_probing" not in rows[path]:
            meta = sae_io.load_metadata(path)
            loc = (int(meta["layer"]), read_write_sites(str(meta["site"]))[0])
            pending.setdefault(loc, []).append(path)
    log(f"[probing] {len(paths)} SAEs under {workdir}/saes, {sum(map(len, pending.values()))} to probe")
    if pending:
        texts, labels, names = fortune_topics() if corpus is None else corpus
        tasks = make_tasks(labels, names, split_of(texts, settings.test_fraction, settings.salt), settings)
        used = np.unique(np.concatenate([np.concatenate([t.train, t.test]) for t in tasks]))
        where = np.full(len(texts), -1)
        where[used] = np.arange(len(used))
        tasks = [dataclasses.replace(t, train=where[t.train], test=where[t.test]) for t in tasks]
        sub = [texts[i] for i in used]
        log(f"[probing] {len(tasks)} tasks ({', '.join(t.name for t in tasks)}), {len(sub)} texts")
        if lm is None:
            from gemmascope.lm.loading import load_lm

            lm = load_lm(config.lm.checkpoint, config.lm.dtype, log=log)
        factor = float(config.lm.outlier_norm_factor)
        summary = {
            "method": "SAEBench sparse_probing (gemmascope.eval.probing)",
            "labels": "topic file of each embedded fortunes text" if corpus is None else "caller's labels",
            "tasks": [t.name for t in tasks],
            "n_train": {t.name: len(t.train) for t in tasks},
            "n_test": {t.name: len(t.test) for t in tasks},
            "settings": dataclasses.asdict(settings),
        }
        for (layer, site), items in sorted(pending.items()):
            llm = None
            for start in range(0, len(items), saes_per_pass):
                chunk = items[start : start + saes_per_pass]
                raw, codes, n_tok = pooled_features(
                    lm, sub, layer, site, [sae_io.load_params(p) for p in chunk], settings, factor
                )
                if llm is None:
                    llm = probe_features(raw, tasks, settings)
                    log(f"[probing] layer {layer} {site} raw activations: {_means(llm)}")
                for path, c in zip(chunk, codes):
                    res = probe_features(c, tasks, settings)
                    row = rows[path]
                    empty = int(np.sum(n_tok == 0))
                    row["sparse_probing"] = dict(summary, texts_without_tokens=empty, sae=res, llm=llm)
                    row.update(result_fields(res, llm))
                    write_json_atomic(os.path.join(os.path.dirname(path), "eval.json"), row)
                    log(f"[probing] {os.path.relpath(path, workdir)}: {_means(res)}")
    out = [rows[p] for p in paths]
    evaluate.write_table_and_plots(out, os.path.join(workdir, "eval"))
    with open(os.path.join(workdir, "eval", "probing.md"), "w") as fh:
        fh.write(probing_markdown(out))
    return out


def _means(res: dict[str, Any]) -> str:
    return " ".join(f"{n} {v:.3f}" for n, v in res["mean"].items())


def probing_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """``probing.md``: per SAE the mean test accuracy over tasks at each k, with the raw
    activations at its site beside it, then each task's accuracies."""
    rows = [r for r in rows if "sparse_probing" in r]
    if not rows:
        return "No SAE has been probed (launch/evaluate.py --probing).\n"
    names = list(rows[0]["sparse_probing"]["sae"]["mean"])
    head = "| SAE | L0 | features | " + " | ".join(names) + " |\n|---|---|---|" + "---|" * len(names) + "\n"
    parts = ["Sparse probing: mean test accuracy over one-vs-rest tasks (gemmascope.eval.probing).\n\n", head]
    seen = set()
    for r in sorted(rows, key=lambda r: (r.get("layer") or 0, str(r.get("site")), r.get("l0") or 0)):
        sp, tag = r["sparse_probing"], f"{r.get('architecture')} {r.get('site')} L{r.get('layer')}"
        if (r.get("layer"), r.get("site")) not in seen:
            seen.add((r.get("layer"), r.get("site")))
            cells = " | ".join(f"{sp['llm']['mean'].get(n, float('nan')):.3f}" for n in names)
            parts.append(f"| raw activations, {r.get('site')} L{r.get('layer')} | | raw | {cells} |\n")
        cells = " | ".join(f"{sp['sae']['mean'].get(n, float('nan')):.3f}" for n in names)
        parts.append(f"| {tag} d_sae {r.get('d_sae')} | {r.get('l0', 0):.1f} | SAE | {cells} |\n")
    for r in rows:
        sp = r["sparse_probing"]
        parts.append(f"\n{r.get('path')} (L0 {r.get('l0', 0):.1f}), per task: SAE / raw activations\n\n")
        parts.append("| task | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n")
        for task in sp["tasks"]:
            s, raw = sp["sae"]["tasks"][task], sp["llm"]["tasks"][task]
            cells = " | ".join(f"{s.get(n, float('nan')):.3f} / {raw.get(n, float('nan')):.3f}" for n in names)
            parts.append(f"| {task} | {cells} |\n")
    return "".join(parts)
