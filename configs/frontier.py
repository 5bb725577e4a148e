"""The sparsity-fidelity frontier on the embedded default: JumpReLU against its baselines.

The config lives in the package: ``gemmascope/configs/frontier.py``
(``from gemmascope.configs import frontier``); this file keeps ``--config=configs/frontier.py``
working from the repository.
"""

from gemmascope.configs.frontier import get_config  # noqa: F401
