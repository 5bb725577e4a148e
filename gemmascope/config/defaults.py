"""Every config field with the Gemma Scope defaults (:func:`base_config`): the one list of fields.

Each field's comment says what it does and why its default; :mod:`gemmascope.config.validation`
checks its values, and the typed per-SAE view (:class:`gemmascope.sae.common.SAEConfig`) is
derived from the ``sae`` section here.
"""

from __future__ import annotations

import ml_collections

from gemmascope.sae.common import SAEConfig

#: SAE file layouts export can write (gemmascope/sae/files/formats.py implements each).
EXPORT_LAYOUTS = ("gemma_scope", "gemma_scope_2", "sae_lens")
#: Architectures config.init_from can start (gemmascope/train/init_from.py un-folds their files).
INIT_FROM_ARCHS = ("jumprelu", "topk")
#: e2e.calibrate_rows's default: 16 batches of the demos' 1,024 rows (docs/gemma3.md, "L0 targets").
E2E_CALIBRATE_ROWS = 16_384


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The sweep: every (site, layer, width) is one location; all lambdas of a location train
    # together on the same batches (stacked parameters, one compiled step).
    c.sites = ("res",)
    c.layers = (0,)
    c.widths = (16384,)
    c.lambdas = (6e-4,)
    # The sweep axis of JumpReLU with sae.sparsity_loss = "quadratic": target L0s, one SAE each.
    c.target_l0s = (40.0,)

    # The SAE's own fields, one list with their defaults and why: gemmascope.sae.common.SAEConfig.
    c.sae = ml_collections.ConfigDict(SAEConfig().to_dict())

    # Optimiser (Adam with b1 = 0 stores no first moment).
    c.lr = 7e-5
    c.lr_warmup_steps = 1000
    c.lr_decay = "constant"  # "constant" (paper default, not stated after warm-up) or "cosine"
    c.lr_final_fraction = 0.0
    c.adam_b1 = 0.0
    # JumpReLU thresholds' own Adam b1 (-1: adam_b1). With momentum a threshold pushed past the
    # last pre-activation in its kernel window keeps rising and the latent dies (train/optim.py).
    c.threshold_adam_b1 = -1.0
    # Multiplies the JumpReLU thresholds' learning rate (Adam moves each by about lr a step, which
    # at the demo's lr is one bandwidth and 3-6% of a threshold: train/optim.py). 1 = as the rest.
    c.threshold_lr_scale = 1.0
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.lambda_warmup_steps = 10_000
    c.project_decoder_grads = True
    # False: decoder rows free (no renormalising after each update, no gradient projection), as
    # SAELens trains its JumpReLU; the recipe (Gemma Scope) keeps them unit norm. For the ablation.
    c.unit_norm_decoder = True
    # Clip each SAE's gradient to this global L2 norm (over all its parameters) before the decoder
    # projection and Adam, as SAELens's trainer does at 1.0. 0 = off (Gemma Scope clips nothing).
    c.grad_clip_norm = 0.0

    # The end-to-end stage (gemmascope/train/e2e.py): for the last `fraction` of the steps each SAE
    # (site `res`, store or online source of a real LM) is spliced into the frozen LM and its loss
    # adds kl_coefficient * KL(clean || spliced) next-token distributions over `sequences` packed
    # train-split sequences per step, its updates scaled by lr_scale (the KL's gradient comes from
    # a few hundred tokens and is far noisier than the reconstruction's); kl_reaches "all" or
    # "decoder" (the KL trains W_dec and b_dec only: it cannot move which latents fire);
    # controller_gain multiplies the L0 controller's rate (sae.l0_controller_rate) during the
    # stage, so it can hold L0 against the KL's pull within the stage's few steps; calibrate_rows:
    # after the stage, each SAE's thresholds are multiplied by the one factor that puts its mean L0
    # on that many further training rows at its target (on target-L0 sweeps; inert elsewhere, where
    # another non-zero value is refused; 0 = off). fraction 0 = no stage.
    c.e2e = ml_collections.ConfigDict()
    c.e2e.fraction = 0.0
    c.e2e.kl_coefficient = 1.0
    c.e2e.sequences = 4
    c.e2e.lr_scale = 1.0
    c.e2e.kl_reaches = "all"
    c.e2e.controller_gain = 1.0
    c.e2e.calibrate_rows = E2E_CALIBRATE_ROWS

    c.batch_size = 4096
    c.num_tokens = 4_000_000_000  # training tokens per SAE; total_steps = ceil(num_tokens / batch)
    c.norm_sample_rows = 65_536  # rows used to estimate the normalisation constant C
    # Fine-tuning (gemmascope/train/init_from.py): SAE folders in any layout we load, one per width
    # of `widths` (matched by d_sae), each starting every SAE of its width from its weights, in
    # this run's normalisation (C, s recomputed on these activations), with a fresh optimiser.
    # () = Gemma Scope's initialisation. A checkpoint in the workdir wins over it (resume).
    c.init_from = ()
    # Per-dimension input scaling (0 = off: one scalar C, as Gemma Scope). With p > 0 the SAE
    # trains on x / (C * s), s_d = std_d^p / rms_d(std^p) from the normalisation sample, and C on
    # the scaled rows; the reconstruction loss then weighs dimension d by 1 / s_d^2. Why: on Gemma 3
    # one residual dimension carries ~75% of the variance, so a loss in raw units spends the
    # dictionary on it and leaves the dimensions the next layers read unexplained (docs/gemma3.md).
    # The scales are folded into the exported weights (gemmascope.sae.files.layouts.fold_dim_scale):
    # files stay plain SAEs in raw units. A transcoder scales its input and its target alike (its
    # paired rows: one s per column, each part then its own C).
    c.dim_scale_power = 0.0
    # The gentler alternative (0 = off): only dimensions whose standard deviation is over
    # dim_std_cap times the median dimension's are scaled down to that cap (s_d = max(1, std_d /
    # (cap * median std))), so a massive dimension weighs like cap^2 ordinary ones and every other
    # dimension keeps its raw weight. Same fold at export. Choose one of the two.
    c.dim_std_cap = 0.0
    c.eval_rows = 65_536  # held-out rows for the L0 / FVU written into metadata.json
    c.dead_window_tokens = 10_000_000  # a latent is dead if it has not fired in this window
    # File layouts written at the end of training (gemmascope.sae.files.formats.LAYOUTS): "gemma_scope"
    # (params.npz under workdir/saes, always written: evaluation reads it), "gemma_scope_2" and
    # "sae_lens" (under workdir/saes_<layout>, same sub-folders).
    c.export = ml_collections.ConfigDict()
    c.export.layouts = ("gemma_scope",)

    c.log_every = 100
    c.checkpoint_every = 1000
    # Metric writers (gemmascope/train/writers.py): metrics.jsonl always; TensorBoard event files
    # under <workdir>/tensorboard; Weights & Biases only when wandb.project is set (then imported).
    c.tensorboard = True
    c.wandb = ml_collections.ConfigDict()
    c.wandb.project = ""  # "" = no W&B
    c.wandb.entity = ""
    c.wandb.name = ""  # run-name prefix (and group); "" = the location name
    c.wandb.mode = "offline"  # "offline" (wandb sync later), "online" or "disabled"
    c.max_checkpoints = 2

    # Device mesh (tensor parallel over latents on "model", batches over "data"); data * model
    # devices are used. sweep: the stacked-lambda axis K is "replicated" or "sharded" over "data".
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.model = 1
    c.mesh.sweep = "replicated"
    # Multi-host: jax.distributed.initialize() arguments ("" / 0 / -1 = from the environment).
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    # A process whose heartbeat stops this long (s) is lost: the others exit (status 75) naming it,
    # within peer_timeout_s + 2 s; 0 = only JAX's own detection (gemmascope/train/distributed.py).
    c.distributed.peer_timeout_s = 60.0

    c.source = "toy"  # "toy" | "store" | "online"
    c.toy = ml_collections.ConfigDict()
    c.toy.d_in = 64
    c.toy.n_features = 128
    c.toy.mean_active = 4.0  # expected number of active ground-truth features per example
    c.toy.noise_std = 0.0

    # The language model and text behind "store" and "online" sources.
    c.lm = ml_collections.ConfigDict()
    c.lm.checkpoint = "embedded"  # "embedded" (SmolLM2-135M GGUF), a .gguf file, or a HF checkpoint dir
    c.lm.dtype = "float32"
    c.lm.context_length = 128  # tokens per packed sequence, BOS first (BOS/EOS/pad never stored)
    c.lm.batch_sequences = 32  # sequences per LM forward
    # Rows whose norm exceeds this many times the batch's median norm are dropped (and counted in
    # the store metadata); 0 keeps everything. SmolLM2's residual stream has attention-sink
    # tokens right after BOS (e.g. a leading "."), with norms ~140x the median, which would
    # otherwise dominate the normalisation constant and the reconstruction loss.
    c.lm.outlier_norm_factor = 10.0

    c.text = ml_collections.ConfigDict()
    c.text.kind = "embedded"  # "embedded" | "hf" (datasets, streaming) | "files" (txt/jsonl/parquet)
    c.text.name = ""  # HF dataset name
    c.text.config = ""  # HF dataset config
    c.text.split = "train"
    c.text.text_column = "text"
    c.text.paths = ()  # local files or globs
    c.text.doc_separator = ""  # for .txt files: a line holding only this separates documents
    c.text.heldout_fraction = 0.05  # documents (by keyed hash) kept out of training for evaluation
    c.text.max_documents = 0  # 0 = all

    # The activation store (source = "store"): written once by launch/generate_activations.py.
    c.store = ml_collections.ConfigDict()
    c.store.path = ""  # local path or gs:// / s3:// URL; "" = <workdir>/activations
    # Sites written at every layer of config.layers (one LM pass). A pair site ("transcoder")
    # writes its two components (mlp_in, mlp) with one joint outlier mask, rows aligned.
    c.store.sites = ("res",)
    c.store.max_tokens = 0  # stop generating after this many stored rows per location (0 = corpus)
    c.store.heldout_rows = 65_536  # held-out rows stored per location for evaluation
    c.store.shuffle_buffer_rows = 262_144
    c.store.rows_per_flush = (
        0  # rows buffered per site before a durable write (0 = one shard); a kill loses at most this
    )

    # runlocal=True applies runlocal_overrides (same structure as the config) at the start of
    # every entry point, so ``--config.runlocal=True`` shrinks any config to a CPU-sized run.
    c.runlocal = False
    c.runlocal_overrides = ml_collections.ConfigDict()
    return c
