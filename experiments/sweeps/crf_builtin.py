r"""The CRFs on the built-in dataset: the front end and front end + Basic context of 3 seeds, each evaluated alone,
with the dense CRF whose parameters crf_search chose on validation images, and with the CRF-RNN layer trained on it
(experiments/synthetic.py's crf stage: the layer alone on the fixed network); mIoU and the boundary measure.

  python -m dilated_jax.sweep --sweep=experiments/sweeps/crf_builtin.py --workdir=runs/crf_builtin

Front ends and budget as experiments/sweeps/synthetic_claims.py.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location('synthetic_claims', os.path.join(os.path.dirname(__file__),
                                                                                'synthetic_claims.py'))
claims = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(claims)
BUDGET, CONFIG, SEEDS = claims.BUDGET, claims.CONFIG, claims.SEEDS


def get_sweep():
  runs = []
  for seed in SEEDS:
    runs.append(dict(name=f'frontend_s{seed}', config=f'{CONFIG}:stage=frontend', group='front end', seed=seed,
                     crf=True))
    runs.append(dict(name=f'basic_s{seed}', config=f'{CONFIG}:stage=context,context=basic', overrides=BUDGET,
                     group='front end + Basic', seed=seed, init_from=f'frontend_s{seed}', crf=True))
  for seed in SEEDS:
    runs.append(dict(name=f'frontend_rnn_s{seed}', config=f'{CONFIG}:stage=crf,context=none',
                     group='front end + RNN', seed=seed, init_from=f'frontend_s{seed}'))
    runs.append(dict(name=f'basic_rnn_s{seed}', config=f'{CONFIG}:stage=crf,context=basic',
                     group='front end + Basic + RNN', seed=seed, init_from=f'basic_s{seed}'))
  return runs
