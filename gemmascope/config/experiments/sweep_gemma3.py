r"""Gemma Scope 2's sweep of a Gemma 3 model (SPEC.md section 7): every layer, sites res, mlp and att
at widths 16k and 262k; the residual stream at 65k and 1m at four depths (25/50/65/85% of the
layers); one SAE per target L0, "small" and "big" (10 and 60: ``config.target_l0s``), trained with
the target-L0 recipe (``sae.sparsity_loss = "quadratic"``, quantile threshold init).

One config is one width of one model (its sites and layers, its two targets, its token budget and
mesh); see ``gemmascope/config/coverage.py`` for the table and the meshes. The jobs that cover a model:
``gemmascope.config.coverage.jobs("gemma3-270m")``.

    python launch/train.py --config=configs/sweep_gemma3.py:model=27b,width=1m,layer=31 --dry_run
    python launch/generate_activations.py --config=configs/sweep_gemma3.py:model=270m,width=16k --workdir=DIR
    python launch/train.py --config=configs/sweep_gemma3.py:model=270m,width=16k --workdir=DIR

``arg``: ``model=270m|1b|4b|12b|27b`` (default 270m), ``width=16k`` (default: the smallest
covered), ``layer=N``, ``site=res|att|mlp``, ``data=``, ``tp=`` (the mesh's model axis),
``sweep=replicated|sharded``, ``runlocal``.
"""

from gemmascope.config import coverage


def get_config(arg=None):
    return coverage.sweep_config_gemma3(arg)
