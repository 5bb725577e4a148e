"""Toy sweep: synthetic activations with known sparse ground truth, trained in about a minute.

The config lives in the package: ``gemmascope/configs/toy.py``
(``from gemmascope.configs import toy``); this file keeps ``--config=configs/toy.py``
working from the repository.
"""

from gemmascope.configs.toy import get_config  # noqa: F401
