r"""The sparsity-fidelity frontier on the embedded default: JumpReLU against its baselines.

Every architecture trains on the same stored SmolLM2 activations (layer 15 residual stream, the
demo's store), at the same width and with the same token budget, batches and learning-rate
schedule as ``configs/demo.py``; only the architecture and its sweep differ. Run one command per
architecture into the same workdir (JumpReLU's sweep *is* the demo's, so a trained demo workdir
already holds it), then evaluate them all together:

    W=workdirs/demo
    python launch/generate_activations.py --config=configs/demo.py --workdir=$W   # once
    for a in jumprelu_quadratic batchtopk jumprelu_quadratic_batch jumprelu topk \
             matryoshka_batchtopk matryoshka_jumprelu_quadratic gated relu; do
      python launch/train.py --config=configs/frontier.py:arch=$a --workdir=$W
    done
    python launch/evaluate.py --config=configs/demo.py --workdir=$W

Sweeps: JumpReLU and Gated over lambda (L0 penalty; L1 of the gate for Gated), ReLU over the
lambda of its decoder-norm-weighted L1, TopK and BatchTopK over k (their L0 directly), the
quadratic JumpReLU over target L0s (``jumprelu_quadratic``: the per-example form,
``jumprelu_quadratic_batch``: the batch form, which the 1x frontier prefers (docs/frontier.md);
each arch names its form, whatever ``sae.quadratic_form``'s default; thresholds start at the
quantiles giving each target; ``_centred``: ``b_dec`` starts at the data's mean). Each grid
spans L0 of roughly 10 to 200, the range where the curves are compared.

``budget=N`` (default 1): N passes over the store, ``num_tokens`` times N; warm-ups (lr 50
steps, sparsity 200 steps), checkpoint cadence and everything else unchanged, so only the
length of the constant-lr phase grows. Run and export folder names do not carry the budget:
give each budget its own workdir, with the demo's store linked in:

    mkdir -p workdirs/demo_4x && ln -s ../demo/activations workdirs/demo_4x/activations
    python launch/train.py --config=configs/frontier.py:arch=topk,budget=4 --workdir=workdirs/demo_4x
"""

from gemmascope import config as config_lib
from gemmascope.config.experiments import demo
from gemmascope.sae import archs

SWEEPS = {
    "jumprelu": (3e-4, 1e-3, 3e-3, 1e-2),
    "gated": (0.06, 0.1, 0.17, 0.3),
    "relu": (0.03, 0.06, 0.1, 0.2),
    "topk": (16, 32, 64, 128),
    # Target-L0 variants: target L0s for the quadratic
    # loss (thresholds start at the quantiles giving each target), k for BatchTopK.
    "batchtopk": (16, 32, 64, 128),
    "jumprelu_quadratic": (20.0, 40.0, 80.0, 160.0),
    "jumprelu_quadratic_batch": (20.0, 40.0, 80.0, 160.0),
    "matryoshka_jumprelu_quadratic": (20.0, 40.0, 80.0, 160.0),
    "matryoshka_jumprelu_quadratic_batch": (20.0, 40.0, 80.0, 160.0),
    "matryoshka_batchtopk": (16, 32, 64, 128),
}
# Any arch above may end in "_centred": b_dec starts at the data's mean (sae.b_dec_init = "mean"),
# e.g. jumprelu_quadratic_batch_centred, topk_centred, batchtopk_centred. The best 1x recipe is
# jumprelu_quadratic_batch_centred with --config.sae.quadratic_coefficient=1e-2
# --config.adam_b1=0.9: configs/demo.py's default, which trains the same SAEs. At budget=4 add
# --config.sae.revive_dead_every=25 (threshold revival: dead latents re-seeded; docs/frontier.md
# measures it against BatchTopK).
# Revival every 50 was neutral at 1x. Matryoshka JumpReLU: its reconstruction term counts once per
# prefix (three here), so the same coefficient weighs less against it and the targets overshoot
# at 1e-2); use --config.sae.quadratic_coefficient=3e-2 (docs/frontier.md). The target-L0 series
# of docs/frontier.md were measured without the L0 controller (sae.l0_controller_rate, on by
# default since): add --config.sae.l0_controller_rate=0 to reproduce them.


def get_config(arg=None):
    a = config_lib.parse_arg(arg, arch="jumprelu", runlocal=False, layer=15, width=4096, budget=1)
    name = a.arch.removesuffix("_centred")
    if name not in SWEEPS:
        raise config_lib.ConfigError(
            f"configs/frontier.py: arch={a.arch!r} unknown (known: {sorted(SWEEPS)}, each optionally + '_centred')"
        )
    if a.budget < 1:
        raise config_lib.ConfigError(f"configs/frontier.py: budget={a.budget!r} must be an integer >= 1 (passes)")
    c = demo.get_config(f"runlocal={a.runlocal},layer={a.layer},width={a.width},recipe=gemma_scope")
    c.unlock()
    c.num_tokens *= a.budget
    c.runlocal_overrides.num_tokens *= a.budget
    if name != a.arch:
        c.sae.b_dec_init = "mean"
    # AuxK (TopK, BatchTopK; JumpReLU with --config.sae.jumprelu_auxk=True): latents silent for 50
    # steps count as dead (the paper's 10M tokens is ~10k steps).
    c.sae.auxk_dead_tokens = 50 * c.batch_size
    c.sae.auxk_k = 256
    form = "batch" if name.endswith("_quadratic_batch") else "per_example"
    arch = name.removesuffix("_batch")
    base = arch.removeprefix("matryoshka_").removesuffix("_quadratic")
    c.sae.arch = base
    if arch.startswith("matryoshka_"):  # nested prefixes: 1/16, 1/4 and all of the dictionary
        c.sae.matryoshka_prefixes = (a.width // 16, a.width // 4, a.width)
        w = c.runlocal_overrides.widths[0]  # runlocal's narrower width needs its own prefixes
        c.runlocal_overrides.sae = {"matryoshka_prefixes": (w // 16, w // 4, w)}
    if arch.endswith("_quadratic"):
        c.sae.sparsity_loss, c.sae.threshold_init_mode = "quadratic", "quantile"
        c.sae.quadratic_form = form
        c.target_l0s = SWEEPS[name]
    elif base in archs.k_archs():
        c.sae.topk_ks = tuple(int(k) for k in SWEEPS[name])
    else:
        c.lambdas = SWEEPS[name]
    return config_lib.lock(c)
