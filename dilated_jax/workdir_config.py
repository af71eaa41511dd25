"""The config a training run saved in its workdir, as a config file: `--config=dilated_jax/workdir_config.py:WORKDIR`.

evaluate, predict and figure use it when given a workdir without --config, so that a run is evaluated with the
settings it was trained with; `--config.FIELD=...` overrides still apply.
"""

from dilated_jax import config


def get_config(workdir):
  return config.from_workdir(workdir)
