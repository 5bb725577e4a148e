"""Gemma Scope's sweep of Gemma 2 27B (46 layers, d_model 4608): residual layers 10, 22, 34 at 131k.

The config lives in the package: ``gemmascope/configs/sweep_27b.py``
(``from gemmascope.configs import sweep_27b``); this file keeps ``--config=configs/sweep_27b.py``
working from the repository.
"""

from gemmascope.configs.sweep_27b import get_config  # noqa: F401
