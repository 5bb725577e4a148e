r"""Gemma Scope's sweep of Gemma 2 27B (46 layers, d_model 4608): residual layers 10, 22, 34 at 131k.

One config is one width (its sites and layers, six lambdas, its token budget and mesh); see
``gemmascope/config/coverage.py`` for the table, the lambda grid and the meshes. The jobs that cover the
model: ``gemmascope.config.coverage.jobs("27b")``.

    python launch/train.py --config=configs/sweep_27b.py:width=131k,layer=22 --dry_run  # memory, no TPU
    python launch/generate_activations.py --config=configs/sweep_27b.py:width=131k --workdir=gs://BUCKET/27b
    python launch/train.py --config=configs/sweep_27b.py:width=131k --workdir=gs://BUCKET/27b

``arg``: ``width=16k`` (default: the smallest covered), ``layer=N``, ``site=res|att|mlp``, ``data=``,
``model=``, ``sweep=replicated|sharded`` (mesh), ``runlocal``.
"""

from gemmascope.config import coverage


def get_config(arg=None):
    return coverage.sweep_config("27b", arg)
