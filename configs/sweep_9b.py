"""Gemma Scope's sweep of Gemma 2 9B (42 layers, d_model 3584):

The config lives in the package: ``gemmascope/configs/sweep_9b.py``
(``from gemmascope.configs import sweep_9b``); this file keeps ``--config=configs/sweep_9b.py``
working from the repository.
"""

from gemmascope.configs.sweep_9b import get_config  # noqa: F401
