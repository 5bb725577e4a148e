r"""Transcoders on the embedded default: SmolLM2-135M, middle layer 15, a sweep of JumpReLU
transcoders reading the MLP's input (``mlp_in``, after its pre-norm) and predicting the MLP's output
(``mlp``), plain and with Gemma Scope 2's affine skip connection.

Generate the activation store once (mlp_in and mlp of layer 15 for 300k tokens, in one LM pass, with one joint
outlier mask so that row i of both is the same token), then train both sweeps:

    python launch/generate_activations.py --config=configs/transcoder.py --workdir=workdirs/transcoder
    python launch/train.py --config=configs/transcoder.py --workdir=workdirs/transcoder

``--config.runlocal=True`` shrinks everything to a CPU run of minutes: 40k stored tokens, width
1024, 120 steps. ``--config.source=online`` trains straight from the LM with no store.

Exports: ``saes/transcoder[_affine]/layer_15/width_<W>/average_l0_<N>/`` (params.npz with W_skip
when affine; metadata.json names both sites and both normalisation constants) and Gemma Scope
2's ``saes_gemma_scope_2/transcoder_all/layer_15_width_<W>_l0_<N>[_affine]/params.safetensors``.

The recipe is the demo's (configs/demo.py) with Gemma Scope 2's target-L0 penalty, on the
transcoder loss ``||y - y_hat||^2 + coef (2/T) (L0 - T)^2``: inputs and targets each normalised to
unit mean squared norm, thresholds initialised at the quantiles giving each target L0, decoder rows
unit norm with projected gradients, Adam without first moment. An SAE sweep on the MLP's output
(``mlp``) at the same targets trains beside them, so ``launch/evaluate.py`` writes
``eval/transcoders_vs_saes.md``: what replacing the MLP costs against reconstructing its output.
"""

from gemmascope import config as config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, runlocal=False, layer=15, width=4096)
    c = config_lib.base_config()
    c.source = "store"
    # The SAE on the MLP's output beside the transcoders: launch/evaluate.py compares them at matched L0.
    c.sites = ("mlp", "transcoder", "transcoder_affine")
    c.layers = (a.layer,)
    c.widths = (a.width,)
    # The target-L0 recipe (Gemma Scope 2): on the demo's res site it beat the L0 penalty at every
    # L0 (docs/frontier.md); with lambdas the transcoders' L0 barely moved between 3e-3 and 1e-2.
    c.sae.sparsity_loss = "quadratic"
    c.sae.threshold_init_mode = "quantile"
    c.target_l0s = (8.0, 16.0, 32.0, 64.0)
    c.lm.checkpoint = "embedded"
    c.lm.context_length = 128
    c.lm.batch_sequences = 32
    c.text.kind = "embedded"
    c.store.sites = ("transcoder",)  # writes mlp_in_L15 and mlp_L15 as an aligned pair
    # Half the embedded corpus and one pass over it: three sweeps (the mlp SAEs and both transcoder
    # kinds) train here, so the demo stays near the SAE demo's cost on 2 cores.
    c.store.max_tokens = 300_000
    c.store.heldout_rows = 16_384
    c.batch_size = 1024
    c.num_tokens = 300 * 1024  # 300 steps: about one pass over the ~300k stored training rows
    c.lr = 1e-3
    c.lr_warmup_steps = 50
    c.lambda_warmup_steps = 100  # a third of the run, as the demo's 200 of 600
    c.norm_sample_rows = 65_536
    c.eval_rows = 16_384
    c.dead_window_tokens = 500_000
    c.log_every = 50
    c.checkpoint_every = 100
    c.export.layouts = ("gemma_scope", "gemma_scope_2")
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
