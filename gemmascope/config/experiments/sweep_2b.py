r"""Gemma Scope's sweep of Gemma 2 2B (26 layers, d_model 2304):
every layer and site at 16k and 65k; residual layer 12 at
32k..524k; residual layers 5, 12, 19 at 1m.

One config is one width (its sites and layers, six lambdas, its token budget and mesh); see
``gemmascope/config/coverage.py`` for the table, the lambda grid and the meshes. The jobs that cover the
model: ``gemmascope.config.coverage.jobs("2b")``.

    python launch/train.py --config=configs/sweep_2b.py:width=1m,layer=12 --dry_run  # memory, no TPU
    python launch/generate_activations.py --config=configs/sweep_2b.py:width=16k --workdir=gs://BUCKET/2b
    python launch/train.py --config=configs/sweep_2b.py:width=16k --workdir=gs://BUCKET/2b

``arg``: ``width=16k`` (default: the smallest covered), ``layer=N``, ``site=res|att|mlp``, ``data=``,
``model=``, ``sweep=replicated|sharded`` (mesh), ``runlocal``.
"""

from gemmascope.config import coverage


def get_config(arg=None):
    return coverage.sweep_config("2b", arg)
