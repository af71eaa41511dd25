r"""The Large module's identity initialisation: noise of std 0.01 in every layer (the released IdentityFiller) or
0.01 C / c_out (eq. 5 asks sigma << C / c_out; 0.01 is 0.16-0.32 of that in the 16C and 32C layers), 3 seeds each.

  python -m dilated_jax.sweep --sweep=experiments/sweeps/large_noise.py --workdir=runs/large_noise

Front ends and budget as experiments/sweeps/synthetic_claims.py (its Large group is the 'fixed' one here).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location('synthetic_claims', os.path.join(os.path.dirname(__file__),
                                                                                'synthetic_claims.py'))
claims = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(claims)
BUDGET, CONFIG, SEEDS = claims.BUDGET, claims.CONFIG, claims.SEEDS

GROUPS = {'Large, noise 0.01 C / c_out (scaled)': 'scaled', 'Large, noise 0.01 (fixed)': 'fixed'}


def get_sweep():
  runs = [dict(name=f'frontend_s{seed}', config=f'{CONFIG}:stage=frontend', group='front end alone', seed=seed)
          for seed in SEEDS]
  for group, noise in GROUPS.items():
    runs += [dict(name=f'large_{noise}_s{seed}', config=f'{CONFIG}:stage=context,context=large',
                  overrides={**BUDGET, 'model.context.noise': noise}, group=group, seed=seed,
                  init_from=f'frontend_s{seed}') for seed in SEEDS]
  return runs
