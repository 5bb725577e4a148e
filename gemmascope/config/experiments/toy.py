r"""Toy sweep: synthetic activations with known sparse ground truth, trained in about a minute.

    python launch/train.py --config=configs/toy.py --workdir=/tmp/toy
    python launch/train.py --config=configs/toy.py --workdir=/tmp/toy --config.lambdas=0.01,0.03

Ground truth: 128 unit directions in 64 dimensions (2x superposition), about 4 active per example,
learned by 256-wide SAEs.
The run writes ``toy_features.npy`` ([n_features, d_in]) so recovery can be checked; the
training recipe is the Gemma Scope one with a larger learning rate and shorter warm-ups, since
the toy run is about 2,000 steps rather than a million.

``arg``: ``runlocal`` (even smaller, for tests), ``steps=N``.
"""

from gemmascope import config as config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, runlocal=False, steps=2000)
    c = config_lib.base_config()
    c.sites = ("toy",)
    c.layers = (0,)
    c.widths = (256,)
    c.lambdas = (0.002, 0.01, 0.03, 0.1)
    c.source = "toy"
    c.toy.d_in = 64
    c.toy.n_features = 128
    c.toy.mean_active = 4.0
    c.batch_size = 1024
    c.num_tokens = a.steps * c.batch_size
    c.lr = 5e-3
    c.lr_warmup_steps = 100
    c.lambda_warmup_steps = 500
    c.norm_sample_rows = 16_384
    c.eval_rows = 16_384
    c.dead_window_tokens = 200_000
    c.log_every = 200
    c.checkpoint_every = 500
    c.runlocal_overrides.num_tokens = 300 * c.batch_size
    c.runlocal_overrides.log_every = 50
    c.runlocal_overrides.checkpoint_every = 100
    c.runlocal = bool(a.runlocal)
    return config_lib.lock(c)
