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
from gemmascope.config.experiments import demo


def get_config(arg=None):
    a = config_lib.parse_arg(arg, runlocal=False, layer=15, width=4096)
    # The SAE demo's model, text, batches, schedule and runlocal sizes (configs/demo.py); the sites,
    # the sparsity recipe and the store's size differ.
    c = demo.get_config(f"runlocal={a.runlocal},layer={a.layer},width={a.width},recipe=gemma_scope")
    c.unlock()
    # The SAE on the MLP's output beside the transcoders: launch/evaluate.py compares them at matched L0.
    c.sites = ("mlp", "transcoder", "transcoder_affine")
    # The target-L0 recipe (Gemma Scope 2): on the demo's res site it beat the L0 penalty at every
    # L0 (docs/frontier.md); with lambdas the transcoders' L0 barely moved between 3e-3 and 1e-2.
    c.sae.sparsity_loss = "quadratic"
    c.sae.threshold_init_mode = "quantile"
    c.target_l0s = (8.0, 16.0, 32.0, 64.0)
    c.store.sites = ("transcoder",)  # writes mlp_in_L15 and mlp_L15 as an aligned pair
    # Half the embedded corpus and one pass over it: three sweeps (the mlp SAEs and both transcoder
    # kinds) train here, so the demo stays near the SAE demo's cost on 2 cores.
    c.store.max_tokens = 300_000
    c.num_tokens = 300 * 1024  # 300 steps: about one pass over the ~300k stored training rows
    c.lambda_warmup_steps = 100  # a third of the run, as the demo's 200 of 600
    c.export.layouts = ("gemma_scope", "gemma_scope_2")
    return config_lib.lock(c)
