r"""The embedded default: SmolLM2-135M, middle layer 15, a sweep of JumpReLU SAEs on the residual stream.

Generate the activation store once (res, att and mlp of layer 15 in one LM pass), then train:

    python launch/generate_activations.py --config=configs/demo.py --workdir=workdirs/demo
    python launch/train.py --config=configs/demo.py --workdir=workdirs/demo

``--config.runlocal=True`` (or ``--config=configs/demo.py:runlocal=True``) shrinks everything to a
run of a few minutes: 40k stored tokens, width 1024, 120 steps.
``--config.source=online`` trains straight from the LM with no store.

Text: the embedded corpus (13k human-written fortunes, ~0.5M SmolLM2 tokens), packed into
128-token sequences with BOS first; BOS, EOS and padding are never stored. 5% of documents
(by keyed hash) are held out for evaluation.

The recipe (``recipe=``):

* ``target_l0`` (the default): the best small-budget recipe of the frontier (docs/frontier.md):
  JumpReLU with Gemma Scope 2's quadratic penalty around a target L0, batch form, coefficient
  1e-2, thresholds started at the quantiles giving each target, ``b_dec`` at the data's mean and
  Adam b1 = 0.9; targets 20, 40, 80 and 160 (``--config.target_l0s``). Measured at this budget
  (one seed): 0.99x / 0.89x TopK's delta LM loss at matched L0 40 / 80, where Gemma Scope's
  lambda sweep is at 2.7x / 2.5x. The L0 controller (``sae.l0_controller_rate``, the library's
  default 1e-3: dual ascent on each target) holds held-out L0 within 1.1% of every target (19.9 / 40.0 / 79.1 /
  160.9; without it +7% / +4% / +2% / +5%: docs/gemma3.md, "L0 targets").
* ``gemma_scope`` (``--config=configs/demo.py:recipe=gemma_scope``): Gemma Scope's recipe, scaled
  to a CPU budget: the same loss (``lambda * L0``), STE, normalisation, Adam (b1 = 0) and decoder
  handling, lambdas 3e-4 .. 1e-2. ``configs/frontier.py``, ``configs/gemma_demo.py`` and
  ``configs/transcoder.py`` build on it and set their own sparsity recipe.

Both take a larger learning rate and shorter warm-ups than the paper, since the run is about a
thousand steps rather than a million.
"""

from gemmascope import config as config_lib

RECIPES = ("target_l0", "gemma_scope")
TARGET_L0S = (20.0, 40.0, 80.0, 160.0)


def get_config(arg=None):
    a = config_lib.parse_arg(arg, runlocal=False, layer=15, width=4096, recipe="target_l0")
    if a.recipe not in RECIPES:
        raise config_lib.ConfigError(f"configs/demo.py: recipe={a.recipe!r} unknown (known: {list(RECIPES)})")
    c = config_lib.base_config()
    c.source = "store"
    c.sites = ("res",)
    c.layers = (a.layer,)
    c.widths = (a.width,)
    c.lambdas = (3e-4, 1e-3, 3e-3, 1e-2)
    if a.recipe == "target_l0":
        c.sae.sparsity_loss = "quadratic"
        c.sae.quadratic_form = "batch"
        c.sae.quadratic_coefficient = 1e-2  # 1e-3 overshot every target by 11-54% on held-out rows
        c.sae.threshold_init_mode = "quantile"
        c.sae.b_dec_init = "mean"
        c.adam_b1 = 0.9  # SAELens's; Gemma Scope's b1 = 0 had 1.4x the delta loss at L0 80 (docs/frontier.md)
        c.target_l0s = TARGET_L0S
    c.lm.checkpoint = "embedded"
    c.lm.context_length = 128
    c.lm.batch_sequences = 32
    c.text.kind = "embedded"
    c.store.sites = ("res", "att", "mlp")
    c.store.max_tokens = 0  # the whole training split of the embedded corpus
    c.store.heldout_rows = 16_384
    c.batch_size = 1024
    c.num_tokens = 600 * 1024  # 600 steps: about one pass over the ~579k stored training rows
    c.lr = 1e-3
    c.lr_warmup_steps = 50
    c.lambda_warmup_steps = 200
    c.norm_sample_rows = 65_536
    c.eval_rows = 16_384
    c.dead_window_tokens = 500_000
    c.log_every = 50
    c.checkpoint_every = 100
    r = c.runlocal_overrides
    r.widths = (1024,)
    r.store = dict(max_tokens=40_000, heldout_rows=4096)
    r.num_tokens = 120 * c.batch_size
    r.norm_sample_rows = 8192
    r.eval_rows = 4096
    r.lambda_warmup_steps = 40
    r.log_every = 20
    r.checkpoint_every = 60
    c.runlocal = bool(a.runlocal)
    return config_lib.lock(c)
