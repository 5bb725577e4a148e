r"""A cross-layer transcoder on every layer of the embedded Gemma 3 270M, trained online: each
batch runs the LM once and reads the residual before the pre-MLP norm (``res_mid``) and the MLP
output (``mlp``) of all 18 layers; features of layer l write to the MLP outputs of layers l..17.

    python launch/train.py --config=configs/clt.py --workdir=workdirs/clt

``arg``: ``width=`` (features per layer, default 1024), ``affine`` (default False: Gemma Scope
2's affine skip per layer when True), ``compare`` (default False: also 18 per-layer JumpReLU
transcoders at the same target L0s, the peers the replacement model is compared with),
``runlocal`` (width 64, 8 steps of 256 rows: the end-to-end check CI runs), ``model=270m|1b``
(default 270m, the embedded one; 1b reads ``google/gemma-3-1b-pt`` from the hub, 26 layers) and
``tp=`` (the mesh's model axis: latents split over that many devices). Gemma Scope 2's 1B CLT
(262k latents over 26 layers: 10,080 per layer) as a dry run on 8 devices::

    python launch/train.py --config=configs/clt.py:model=1b,width=10080,tp=8 --dry_run

The recipe is the transcoder demo's (configs/transcoder.py): Gemma Scope 2's quadratic penalty
around each target L0 (per layer, averaged over layers for the CLT), thresholds at the quantiles
giving the target, the regression start. Normalisation: one constant per layer and per part
(``C_in[l]``, ``C_out[m]``), folded into the exported files (Gemma Scope 2's CLT layout).
"""

from gemmascope import config as config_lib
from gemmascope.config.experiments import demo

TARGET_L0S = (8.0, 16.0)
N_LAYERS = 18  # Gemma 3 270M
#: model -> (checkpoint, layers)
MODELS = {"270m": ("embedded:gemma3-270m", N_LAYERS), "1b": ("google/gemma-3-1b-pt", 26)}


def get_config(arg=None):
    a = config_lib.parse_arg(arg, runlocal=False, width=1024, affine=False, compare=False, model="270m", tp=1)
    if a.model not in MODELS:
        raise config_lib.ConfigError(f"configs/clt.py: model must be one of {sorted(MODELS)}, got {a.model!r}")
    c = demo.get_config(f"runlocal={a.runlocal},layer=0,width={a.width}")
    c.unlock()
    c.lm.checkpoint, n_layers = MODELS[a.model]
    c.source = "online"
    site = "clt_affine" if a.affine else "clt"
    c.sites = (site, "transcoder_affine" if a.affine else "transcoder") if a.compare else (site,)
    c.layers = tuple(range(n_layers))
    c.mesh.model = int(a.tp)
    c.target_l0s = TARGET_L0S
    c.sae.threshold_init_mode = "quantile"
    c.sae.l0_controller_rate = 0.0  # the demo's L0 controller is not measured on CLTs yet
    c.sae.b_dec_init = "zero"  # the regression start sets b_dec
    c.export.layouts = ("gemma_scope",)
    c.store.sites = ()
    c.num_tokens = 300 * 1024
    c.lambda_warmup_steps = 100
    r = c.runlocal_overrides
    r.widths = (64,)
    r.batch_size = 256
    r.num_tokens = 8 * 256
    r.norm_sample_rows = 1024
    r.eval_rows = 512
    r.lr_warmup_steps = 2
    r.lambda_warmup_steps = 4
    r.log_every = 4
    r.checkpoint_every = 4
    r.lm = dict(batch_sequences=8)
    r.store = dict(max_tokens=0, heldout_rows=512)
    return config_lib.lock(c)
