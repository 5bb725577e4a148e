"""Gemma Scope's sweep of Gemma 2 2B (26 layers, d_model 2304):

The config lives in the package: ``gemmascope/configs/sweep_2b.py``
(``from gemmascope.configs import sweep_2b``); this file keeps ``--config=configs/sweep_2b.py``
working from the repository.
"""

from gemmascope.configs.sweep_2b import get_config  # noqa: F401
