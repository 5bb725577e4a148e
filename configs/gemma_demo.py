"""The embedded demo on Gemma 3 270M: middle layer 9, four JumpReLU SAEs with the target-L0 recipe.

The config lives in the package: ``gemmascope/configs/gemma_demo.py``
(``from gemmascope.configs import gemma_demo``); this file keeps ``--config=configs/gemma_demo.py``
working from the repository.
"""

from gemmascope.configs.gemma_demo import get_config  # noqa: F401
