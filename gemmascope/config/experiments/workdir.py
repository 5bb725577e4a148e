r"""The config a workdir was trained with: ``<workdir>/config.json``, written by ``launch/train.py``.

    python launch/evaluate.py --config=configs/workdir.py:workdirs/demo --workdir=workdirs/demo

``launch/evaluate.py`` and ``launch/analyze.py`` use it by themselves when ``--config`` is not
given; ``--config.<field>=`` overrides apply on top. ``arg``: the workdir or its ``config.json``.
"""

from gemmascope import config as config_lib
from gemmascope.config import files as config_files


def get_config(arg=None):
    if not arg:
        raise config_lib.ConfigError("configs/workdir.py needs the workdir: --config=configs/workdir.py:<workdir>")
    return config_files.load_saved(arg)
