"""Transcoders on the embedded default: SmolLM2-135M, layer 15, mlp_in -> mlp, plain and affine.

The config lives in the package: ``gemmascope/configs/transcoder.py``
(``from gemmascope.configs import transcoder``); this file keeps ``--config=configs/transcoder.py``
working from the repository.
"""

from gemmascope.configs.transcoder import get_config  # noqa: F401
