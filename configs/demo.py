"""The embedded default: SmolLM2-135M, middle layer 15, a sweep of JumpReLU SAEs on the residual stream.

The config lives in the package: ``gemmascope/configs/demo.py``
(``from gemmascope.configs import demo``); this file keeps ``--config=configs/demo.py``
working from the repository.
"""

from gemmascope.configs.demo import get_config  # noqa: F401
