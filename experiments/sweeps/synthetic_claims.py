r"""The paper's claims on the built-in dataset, 3 seeds each (issue: reproduce the paper on the CPU).

  python -m dilated_jax.sweep --sweep=experiments/sweeps/synthetic_claims.py --workdir=runs/claims

(a) front end vs front end + Basic vs front end + Large context (paper Table 3);
(b) identity vs random (He-normal) initialisation of the Basic module (paper §3: random schemes were not effective);
(c) the exponential schedule 1,1,2,4,8,16,1 vs all dilations 1 vs a hybrid schedule 1,2,5,9 repeated (Wang et al.
    2018, "Understanding convolution for semantic segmentation") vs the exponential schedule reversed, all with
    7 3x3 layers of C channels: equal parameter counts.
Each context run starts from the front end of its seed; the scenes are the same for every seed (data.synthetic.seed).
Every context run has the same budget, a quarter of experiments/synthetic.py's (400 steps of 8 scenes instead of 800
of 16; Basic has converged by then): the Large module costs ~25x Basic's FLOPs, and 3 Large runs at full budget
alone would take over an hour on 2 cores.
"""

SEEDS = (0, 1, 2)
CONFIG = 'experiments/synthetic.py'
# group -> (config argument, overrides)
CONTEXT = {
    'Basic (exponential 1,1,2,4,8,16,1)': ('context=basic', {}),
    'Large': ('context=large', {}),
    'Basic, random init': ('context=basic', {'model.context.initialisation': 'random'}),
    'flat 1,1,1,1,1,1,1': ('context=flat', {}),
    'hybrid 1,2,5,9,1,2,5': ('context=basic', {'model.context.dilations': (1, 2, 5, 9, 1, 2, 5)}),
    'reversed 16,8,4,2,1,1,1': ('context=basic', {'model.context.dilations': (16, 8, 4, 2, 1, 1, 1)}),
}
BUDGET = {'total_steps': 400, 'batch_size': 8, 'checkpoint_every': 200, 'eval_every': 200}
SLUGS = {'Basic (exponential 1,1,2,4,8,16,1)': 'basic', 'Large': 'large', 'Basic, random init': 'basic_random',
         'flat 1,1,1,1,1,1,1': 'flat', 'hybrid 1,2,5,9,1,2,5': 'hybrid', 'reversed 16,8,4,2,1,1,1': 'reversed'}


def get_sweep():
  runs = []
  for seed in SEEDS:
    front = f'frontend_s{seed}'
    runs.append(dict(name=front, config=f'{CONFIG}:stage=frontend', group='front end alone', seed=seed))
    for group, (arg, overrides) in CONTEXT.items():
      runs.append(dict(name=f'{SLUGS[group]}_s{seed}', config=f'{CONFIG}:stage=context,{arg}',
                       overrides={**BUDGET, **overrides},
                       group=group, seed=seed, init_from=front))
  return runs
