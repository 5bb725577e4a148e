r"""Our frontier SAEs against SAELens's, trained by SAELens's own trainer on the same stored rows.

    W=workdirs/demo   # the demo store, with the frontier SAEs trained (configs/frontier.py)
    python experiments/frontier_peers.py --workdir=$W                     # both unit modes, all peers
    python experiments/frontier_peers.py --workdir=$W --units=gemma_scope --peers=jumprelu_step
    python experiments/frontier_peers.py --workdir=$W --steps=20 --values=1 --no-write   # smoke test
    # SAELens's JumpReLU in Gemma Scope units against its counterparts and our best recipe:
    python experiments/frontier_peers.py --workdir=$W --units=gemma_scope \
        --peers=jumprelu_step,jumprelu_quadratic --ours=jumprelu_quadratic_batch_centred
    # three SAEs per peer, bracketing matched L0 40 and 80:
    python experiments/frontier_peers.py --workdir=$W --units=gemma_scope --peers=topk,batchtopk \
        --values_for='topk=32,64,128;batchtopk=32,64,128'

Peers (SAELens ``sae-lens==6.54.12``, pinned in setup.py's ``bench`` extra, on CPU torch):
JumpReLU with ``jumprelu_sparsity_loss_mode="step"`` (Gemma Scope's L0 loss; our ``jumprelu``) and
``"quadratic"`` (Gemma Scope 2's; our ``jumprelu_quadratic``), TopK (our ``topk``) and BatchTopK
(our ``batchtopk``). Each trains one SAE per value of our sweep for that architecture
(``gemmascope.config.experiments.frontier.SWEEPS``: the same lambdas, target L0s and k), with
``SAETrainer`` on the rows our trainer reads, in the same order (``make_source`` with the
frontier config's seed), for the same steps and batch, the same peak lr and warm-up lengths (lr
50 steps, sparsity 200; each library keeps its own warm-up *shape*: SAELens linear from lr/50,
ours cosine from lr/10) and budget (``--budget`` passes, as ``configs/frontier.py``'s).

Two unit modes (``--units``):

* ``defaults``: SAELens's dataclass defaults for everything not listed above (raw inputs,
  ``normalize_activations="none"``, bandwidth 0.05, initial threshold 0.01, decoder rows
  initialised at norm 0.1, Adam b1 0.9, AuxK coefficient 1, dead after 1000 steps). Its L0
  coefficients (lambda; the quadratic coefficient) are ours times ``C^2 = E||x||^2``, so that the
  penalty keeps the same weight against the raw-unit MSE (our loss is in units with
  ``E||x||^2 = 1``); without this the lambda grid would aim at other L0s.
* ``gemma_scope``: inputs scaled by ``1 / C`` (SAELens's activation scaler, folded back into the
  weights when training ends), bandwidth and initial threshold 0.001, decoder rows initialised
  at unit norm; coefficients exactly ours. The rest stays SAELens's (Adam b1 0.9, free decoder
  norms, gradient clipping at 1.0).

Every SAE, ours and theirs, is scored by our evaluator (``gemmascope.eval.evaluate``) on the same
held-out tokens (``--max_tokens``): theirs are converted with
``gemmascope.sae.files.formats.load_sae_lens`` (pre-encoder bias and TopK decoder-norm rescaling
folded) into ``<out>/saes/res/layer_15/width_4k/saelens_<peer>[_gs]/average_l0_<N>``, ours are
the exports under ``<workdir>/saes`` (evaluated there if they have no ``eval.json`` yet). Both are
interpolated at matched L0 (20, 40, 80, 160: linear in log L0 between the two nearest SAEs, never
extrapolated). A rerun skips SAEs already trained (a ``done.json`` per SAE under ``<out>/runs``).

Rows appended to BENCHMARKS.md: per peer and unit mode, delta LM loss and FVU at matched L0 40 and
80, ours over theirs (below 1: ours better), and the training wall time per SAE (theirs measured
here; ours from ``--ours_wall_s``, the sweep's wall time divided by its SAEs, e.g. from the log
of the frontier runs, since our trainer trains a sweep of four together). Machine load (1-minute
average) is written into every row: wall times on a shared 2-core CPU are only comparable at
similar load. Each peer needs something of ours to be compared with: its counterpart series
exported under ``<workdir>/saes/res`` (``PEERS``: e.g. ``batchtopk`` from ``configs/frontier.py``),
or ``--ours`` / ``--ours_from``; without one the experiment stops before training (``--no-eval`` trains
regardless).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.report import append_rows, machine  # noqa: E402
from gemmascope import config as config_lib  # noqa: E402
from gemmascope.config.experiments import frontier  # noqa: E402

SAE_LENS_VERSION = "6.54.12"
# peer -> (SAELens training class name, our frontier arch it is compared with, extra cfg fields)
PEERS = {
    "jumprelu_step": ("jumprelu", "jumprelu", {"jumprelu_sparsity_loss_mode": "step"}),
    "jumprelu_quadratic": ("jumprelu", "jumprelu_quadratic", {"jumprelu_sparsity_loss_mode": "quadratic"}),
    "topk": ("topk", "topk", {}),
    "batchtopk": ("batchtopk", "batchtopk", {}),
}
UNITS = ("defaults", "gemma_scope")
LR_WARMUP, SPARSITY_WARMUP = 50, 200  # configs/demo.py's warm-up lengths (steps)


def variant(peer: str, units: str) -> str:
    """The series name of a SAELens peer in our eval tables: ``saelens_<peer>`` (defaults) or
    ``saelens_<peer>_gs`` (Gemma Scope units)."""
    return f"saelens_{peer}" + ("_gs" if units == "gemma_scope" else "")


def sae_lens_config(peer: str, units: str, value: float, d_in: int, d_sae: int, c2: float, quad_coef: float):
    """The SAELens training config of one SAE: ``value`` is our sweep value (lambda, target L0 or
    k), ``c2 = E||x||^2`` of the raw rows, ``quad_coef`` our quadratic coefficient."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    kind, _, extra = PEERS[peer]
    gs = units == "gemma_scope"
    common = dict(d_in=d_in, d_sae=d_sae, **extra)
    if gs:
        common["decoder_init_norm"] = 1.0
    scale = 1.0 if gs else c2  # the penalty's weight against the MSE, in SAELens's input units
    if kind == "jumprelu":
        if peer == "jumprelu_quadratic":
            common.update(target_l0=float(value), l0_coefficient=quad_coef * scale)
        else:
            common.update(l0_coefficient=float(value) * scale)
        if gs:
            common.update(jumprelu_bandwidth=0.001, jumprelu_init_threshold=0.001)
        return JumpReLUTrainingSAEConfig(l0_warm_up_steps=SPARSITY_WARMUP, **common)
    cls = TopKTrainingSAEConfig if kind == "topk" else BatchTopKTrainingSAEConfig
    return cls(k=int(value), **common)


def train_one(cfg, units: str, c: float, batches, steps: int, batch_size: int, lr: float):
    """Trains one SAELens SAE with its ``SAETrainer``; returns (the SAE, wall seconds)."""
    import torch
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    if isinstance(cfg, JumpReLUTrainingSAEConfig):
        sae = JumpReLUTrainingSAE(cfg)
    elif isinstance(cfg, BatchTopKTrainingSAEConfig):
        sae = BatchTopKTrainingSAE(cfg)
    else:
        sae = TopKTrainingSAE(cfg)
    tcfg = SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,  # what SAELens's runner config fills in (unused: constant lr, no decay steps)
        lr_warm_up_steps=min(LR_WARMUP, max(steps - 1, 0)),
    )
    provider = (torch.from_numpy(np.asarray(next(batches), np.float32)) for _ in iter(int, 1))
    trainer = SAETrainer(tcfg, sae, provider)
    if units == "gemma_scope":
        trainer.activation_scaler.scaling_factor = 1.0 / c  # E||x||^2 = 1; folded into the weights at the end
    t = time.perf_counter()
    sae = trainer.fit()
    return sae, time.perf_counter() - t


def export_peer(sae, folder: str, tmp: str, meta: dict, heldout: np.ndarray) -> dict:
    """SAELens folder -> our raw-unit ``params.npz`` (via our SAELens reader) with metadata; the
    held-out L0/FVU of ``gemmascope.eval.exported.evaluate_exported`` name the folder."""
    from gemmascope.eval.exported import evaluate_exported
    from gemmascope.sae.files import formats
    from gemmascope.sae.files import io as sae_io

    sae.save_inference_model(tmp)
    params = formats.load_sae_lens(tmp)
    ev = evaluate_exported(params, heldout)
    layout = "topk" if "k" in params else "jumprelu"
    out = sae_io.sae_dir(folder, "res", meta["layer"], width=meta["d_sae"], l0=ev["l0"], arch=meta["variant"])
    if os.path.exists(out):  # another sweep value landed on the same rounded L0
        out = f"{out}_v{meta['sweep_value']:g}"
    meta = {**meta, "architecture": layout, "l0": ev["l0"], "fvu": ev["fvu"], "units": "raw activations"}
    sae_io.save_params(os.path.join(out, "params.npz"), params, meta)
    return {"path": os.path.join(out, "params.npz"), **meta}


def our_series(workdir: str) -> set[str]:
    """The series (export folder names, e.g. ``jumprelu_quadratic_batch_centred``) with an SAE
    exported under ``<workdir>/saes/res``: the names the evaluator's rows carry."""
    import glob

    found = glob.glob(os.path.join(workdir, "saes", "res", "layer_*", "width_*", "*", "*", "params.npz"))
    return {os.path.basename(os.path.dirname(os.path.dirname(f))) for f in found}


def training_load(params_path: str) -> float | None:
    """The 1-minute load average while a peer SAE trained (mean of the start and end values its
    ``metadata.json`` records beside ``params_path``); None if it records none."""
    path = os.path.join(os.path.dirname(params_path), "metadata.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        meta = json.load(fh)
    if "load_1min_start" not in meta:
        return None
    return (float(meta["load_1min_start"]) + float(meta.get("load_1min_end", meta["load_1min_start"]))) / 2


def ours_norm_constant(workdir: str) -> float:
    """C = sqrt(E||x||^2) as our trainer measured it (every frontier export of the store records
    the same one): the peers use exactly our normalisation."""
    import glob

    for p in sorted(glob.glob(os.path.join(workdir, "saes", "res", "**", "metadata.json"), recursive=True)):
        with open(p) as fh:
            meta = json.load(fh)
        if "normalisation_constant" in meta:
            return float(meta["normalisation_constant"])
    raise FileNotFoundError(
        f"no frontier export with a normalisation_constant under {workdir}/saes/res: train ours first "
        "(launch/train.py --config=configs/frontier.py:arch=...)"
    )


def compare(
    rows: list[dict],
    peers,
    units,
    ours_wall: dict[str, float],
    walls: dict[str, list[float]],
    load: str,
    extra_ours: tuple[str, ...] = (),
):
    """Markdown rows: ours over theirs at matched L0 40 and 80, wall time per SAE. Each peer is
    compared with its counterpart (``PEERS``) and with every series in ``extra_ours`` (e.g. our
    best recipe, ``jumprelu_quadratic_batch_centred``, against each SAELens JumpReLU)."""
    from gemmascope.eval.evaluate import MATCHED_L0S, matched_l0

    m = matched_l0(rows, MATCHED_L0S)
    out = []

    def fmt(o, t):
        return "n/a" if o is None or t is None else f"{o:.4g} / {t:.4g} = {o / t:.2f}x"

    for u in units:
        for peer, ours in ((p, o) for p in peers for o in dict.fromkeys((PEERS[p][1], *extra_ours))):
            theirs = variant(peer, u)
            if theirs not in m or ours not in m:
                continue
            cells = []
            for l0 in (40.0, 80.0):
                for k in ("delta_loss", "fvu"):
                    cells.append(fmt(m[ours][l0][k], m[theirs][l0][k]))
            w = walls.get(theirs) or []
            tw = f"{np.mean(w):.0f}" if w else "n/a"
            ow = f"{ours_wall[ours]:.0f}" if ours in ours_wall else "n/a"
            out.append(f"| {ours} vs SAELens {peer} | {u} | " + " | ".join(cells) + f" | {ow} | {tw} | {load} |")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="the demo workdir: store at <workdir>/activations, our SAEs")
    ap.add_argument("--out", default=None, help="where the peers go (default <workdir>/peers)")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {sorted(PEERS)}")
    ap.add_argument("--units", default=",".join(UNITS), help=f"comma list of {UNITS}")
    ap.add_argument("--budget", type=int, default=1, help="passes over the store (configs/frontier.py's budget)")
    ap.add_argument("--steps", type=int, default=0, help="override the steps (smoke tests; 0 = the budget's)")
    ap.add_argument("--values", type=int, default=0, help="train only the first N sweep values (0 = all)")
    ap.add_argument(
        "--values_for",
        default="",
        help="a peer's own values instead of the frontier sweep's: 'topk=32,64,128;jumprelu_quadratic=30,60,120' "
        "(lambdas, target L0s or k; e.g. to bracket matched L0 40 and 80 with three SAEs)",
    )
    ap.add_argument("--max_tokens", type=int, default=100_000, help="held-out tokens per SAE (launch/evaluate.py's)")
    ap.add_argument("--ours", default="", help="more of our series to compare with every peer (comma list)")
    ap.add_argument(
        "--ours_from",
        default="",
        help="series from other workdirs of the same store, compared with every peer: "
        "'WORKDIR:SERIES=LABEL,...' (e.g. workdirs/abl_coef_b1:jumprelu_quadratic_batch_centred=recipe_b1)",
    )
    ap.add_argument("--ours_wall_s", default="", help="our wall seconds per SAE: 'jumprelu=90,topk=375'")
    ap.add_argument("--no-write", dest="write", action="store_false", help="print rows, leave BENCHMARKS.md")
    ap.add_argument("--no-eval", dest="evaluate", action="store_false", help="train and export only")
    args = ap.parse_args(argv)

    peers = [p for p in args.peers.split(",") if p]
    units = [u for u in args.units.split(",") if u]
    for p in peers:
        if p not in PEERS:
            ap.error(f"--peers: unknown peer {p!r} (known: {sorted(PEERS)})")
    for u in units:
        if u not in UNITS:
            ap.error(f"--units: unknown unit mode {u!r} (known: {UNITS})")
    values_for: dict[str, list[float]] = {}
    for item in filter(None, args.values_for.split(";")):
        k, _, v = item.partition("=")
        if k.strip() not in PEERS or not v:
            ap.error(f"--values_for: {item!r} is not PEER=V1,V2,... with PEER in {sorted(PEERS)}")
        try:
            values_for[k.strip()] = [float(x) for x in v.split(",")]
        except ValueError:
            ap.error(f"--values_for: {item!r}: values must be numbers")
        vals = values_for[k.strip()]
        if any(x <= 0 for x in vals):
            ap.error(f"--values_for: {item!r}: values must be positive (lambdas, target L0s or k)")
        if PEERS[k.strip()][0] != "jumprelu" and any(x != int(x) for x in vals):
            ap.error(f"--values_for: {item!r}: k must be a whole number")
    ours_wall = {}
    for item in filter(None, args.ours_wall_s.split(",")):
        k, _, v = item.partition("=")
        ours_wall[k.strip()] = float(v)
    if args.evaluate:  # a peer with nothing of ours to compare with would train for nothing
        have = our_series(args.workdir)
        extra = [o for o in args.ours.split(",") if o]
        unknown = [o for o in extra if o not in have]
        if unknown:
            ap.error(f"--ours: {unknown} not exported under {args.workdir}/saes/res (found: {sorted(have)})")
        for p in peers if not (extra or args.ours_from) else ():
            if PEERS[p][1] not in have:
                ap.error(
                    f"--peers: {p} is compared with our {PEERS[p][1]!r} series, which is not exported under "
                    f"{args.workdir}/saes/res (found: {sorted(have)}); pass --ours=SERIES, --ours_from or train it"
                )
    out = args.out or os.path.join(args.workdir, "peers")
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from gemmascope.data.sources import make_source
    from gemmascope.eval.evaluate import evaluate_workdir

    c = ours_norm_constant(args.workdir)
    walls: dict[str, list[float]] = {}
    loads: list[float | None] = []  # the machine's load while each peer SAE trained
    for peer in peers:
        cfg = config_lib.prepare(frontier.get_config(f"arch={PEERS[peer][1]},budget={args.budget}"))
        steps = args.steps or config_lib.total_steps(cfg)
        values = values_for.get(peer) or list(frontier.SWEEPS[PEERS[peer][1]])[: args.values or None]
        for u in units:
            for value in values:
                name = f"{variant(peer, u)}_{value:g}_steps{steps}"
                done = os.path.join(out, "runs", name, "done.json")
                if os.path.exists(done):
                    with open(done) as fh:
                        rec = json.load(fh)
                    walls.setdefault(variant(peer, u), []).append(rec["wall_s"])
                    loads.append(training_load(rec["path"]))
                    print(f"[peers] {name}: done ({rec['path']})")
                    continue
                source = make_source(cfg, args.workdir, "res", layer=int(cfg.layers[0]))  # our rows, our order
                scfg = sae_lens_config(
                    peer, u, value, source.d_in, int(cfg.widths[0]), c * c, float(cfg.sae.quadratic_coefficient)
                )
                load0 = os.getloadavg()[0]
                sae, wall = train_one(scfg, u, c, source, steps, int(cfg.batch_size), float(cfg.lr))
                meta = {
                    "variant": variant(peer, u),
                    "site": "res",
                    "layer": int(cfg.layers[0]),
                    "d_in": int(source.d_in),
                    "d_sae": int(cfg.widths[0]),
                    "library": f"sae_lens {SAE_LENS_VERSION}",
                    "sae_lens_config": {k: v for k, v in scfg.to_dict().items() if k != "metadata"},
                    "units_mode": u,
                    "sweep_value": float(value),
                    "steps": int(steps),
                    "tokens_trained": int(steps * cfg.batch_size),
                    "wall_s": wall,
                    "load_1min_start": load0,
                    "load_1min_end": os.getloadavg()[0],
                }
                if PEERS[peer][0] != "jumprelu":
                    meta["k"] = int(value)
                else:
                    meta["sparsity_coefficient"] = float(value)
                heldout = np.asarray(source.heldout(cfg.eval_rows), np.float32)
                rec = export_peer(
                    sae, os.path.join(out, "saes"), os.path.join(out, "runs", name, "sae_lens"), meta, heldout
                )
                os.makedirs(os.path.dirname(done), exist_ok=True)
                with open(done, "w") as fh:
                    json.dump({"path": rec["path"], "wall_s": wall, "l0": rec["l0"], "fvu": rec["fvu"]}, fh)
                walls.setdefault(variant(peer, u), []).append(wall)
                loads.append(training_load(rec["path"]))
                print(f"[peers] {name}: {wall:.0f} s, held-out L0 {rec['l0']:.1f} FVU {rec['fvu']:.4f}")
    if not args.evaluate:
        return
    demo_cfg = config_lib.prepare(frontier.get_config("arch=jumprelu"))
    theirs = evaluate_workdir(demo_cfg, out, args.max_tokens)
    ours = evaluate_workdir(demo_cfg, args.workdir, args.max_tokens)
    extra = tuple(o for o in args.ours.split(",") if o)
    for item in filter(None, args.ours_from.split(",")):
        wd, _, rest = item.partition(":")
        series, _, label = rest.partition("=")
        rows_wd = evaluate_workdir(demo_cfg, wd, args.max_tokens)
        got = [{**r, "architecture": label} for r in rows_wd if r["architecture"] == series]
        if not got or not label:
            ap.error(f"--ours_from: {item!r}: no series {series!r} evaluated under {wd} (or no '=LABEL')")
        ours += got
        extra += (label,)
    known = [x for x in loads if x is not None]  # while SAELens trained; else now (older runs)
    load = f"{np.mean(known):.1f}" if known else f"{os.getloadavg()[0]:.1f} (at evaluation)"
    rows = compare(ours + theirs, peers, units, ours_wall, walls, load, extra)
    header = (
        "| ours vs theirs | units | delta loss @ L0 40 (ours / theirs) | FVU @ L0 40 | delta loss @ L0 80 | "
        "FVU @ L0 80 | ours wall s / SAE | theirs wall s / SAE | load |\n|---|---|---|---|---|---|---|---|---|"
    )
    print(header)
    print("\n".join(rows))
    if args.write and rows:
        steps_note = f"{args.steps} steps (smoke)" if args.steps else f"budget {args.budget}x"
        append_rows(
            f"Frontier against SAELens {SAE_LENS_VERSION} (experiments/frontier_peers.py; {steps_note}; {machine()})",
            header,
            rows,
        )


if __name__ == "__main__":
    main()
