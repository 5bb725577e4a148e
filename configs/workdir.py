"""The config a workdir was trained with: ``<workdir>/config.json``, written by ``launch/train.py``.

The config lives in the package: ``gemmascope/configs/workdir.py``
(``from gemmascope.configs import workdir``); this file keeps ``--config=configs/workdir.py``
working from the repository.
"""

from gemmascope.configs.workdir import get_config  # noqa: F401
