"""Runs a sweep (dilation schedules, context variants, initialisations, seeds) and gathers it into one table and plot.

  python -m dilated_jax.sweep --sweep=experiments/sweeps/synthetic_claims.py --workdir=runs/claims
  python -m dilated_jax.sweep --sweep=... --workdir=... --print_commands   # one line per run, for a cluster

A sweep file defines get_sweep() -> a list of runs, each a dict: name (its workdir below --workdir), config
('experiments/X.py:arg'), overrides ({field: value}), group (the row it counts towards), seed, and optionally
init_from (the name of an earlier run of the sweep) and crf (True: also `crf_search` on val, then `evaluate
--crf_params` on test, counted in the row 'GROUP + CRF'). Each run is `train` then `evaluate --split=test` on its
best checkpoint; a command whose output exists is skipped, so an interrupted sweep continues where it stopped. The
results: WORKDIR/results.md and .csv (mean and spread over seeds per group, mIoU and the boundary measure) and
WORKDIR/miou_vs_receptive_field.png.
"""

import csv
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time

from absl import flags, logging
import numpy as np

from dilated_jax import InputError, cli, config as config_lib, receptive_field as rf
from dilated_jax.models import build_model

SPLIT = 'test'


def load_sweep(path: str) -> list[dict]:
  """The runs of a sweep file, checked: unique names, init_from naming an earlier run."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'sweep: {path} is not a file')
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  runs, seen = module.get_sweep(), set()
  for run in runs:
    missing = {'name', 'config', 'group', 'seed'} - set(run)
    if missing:
      raise InputError(f'{path}: run {run.get("name", run)} lacks {sorted(missing)}')
    if run.get('init_from') and run['init_from'] not in seen:
      raise InputError(f'{path}: run {run["name"]} starts from {run["init_from"]}, which is not an earlier run')
    if run['name'] in seen:
      raise InputError(f'{path}: two runs are named {run["name"]}')
    seen.add(run['name'])
  return runs


def flag_value(value) -> str:
  if not isinstance(value, tuple):
    return str(value)
  return '(' + ','.join(map(str, value)) + (',)' if len(value) == 1 else ')')


def commands(run: dict, workdir: str) -> list[list[str]]:
  """The train and evaluate command lines of one run (with crf, then its search and CRF evaluation)."""
  out = os.path.join(workdir, run['name'])
  overrides = dict(run.get('overrides', {}), seed=run['seed'])
  if run.get('init_from'):
    overrides['init_from'] = os.path.join(workdir, run['init_from'])
  flags_ = [f'--config.{k}={flag_value(v)}' for k, v in overrides.items()]
  python = [sys.executable, '-m']
  same = [f'--config={run["config"]}', f'--workdir={out}']
  own = same + [f for f in flags_ if not f.startswith('--config.init_from')]  # the run's config, trained
  evaluate = python + ['dilated_jax.evaluate', *own, f'--split={SPLIT}', '--checkpoint=best']
  out_commands = [python + ['dilated_jax.train', *same, *flags_], evaluate]
  if run.get('crf'):
    out_commands += [python + ['dilated_jax.crf_search', *own, '--split=val', '--checkpoint=best'],
                     evaluate + [f'--crf_params={os.path.join(out, "crf", "params.json")}']]
  return out_commands


def outputs(run: dict, workdir: str) -> list[str]:
  """What each of `commands` leaves when it is done (train: the evaluation after it)."""
  out = os.path.join(workdir, run['name'])
  done = [os.path.join(out, 'eval', f'{SPLIT}_best.json')] * 2
  if run.get('crf'):
    done += [os.path.join(out, 'crf', 'params.json'), os.path.join(out, 'eval', f'{SPLIT}_best_crf.json')]
  return done


def run_config(run: dict):
  """The config of a run: its config file and argument, then its overrides."""
  cfg = config_lib.load(run['config'])
  try:
    cfg.update_from_flattened_dict(run.get('overrides', {}))  # the config is locked: a mistyped field is an error
  except (KeyError, AttributeError, TypeError) as e:
    message = str(e.args[0] if e.args else e)
    hint = message.split('\n')[-1] if 'Did you mean' in message else ''
    raise InputError(f'sweep: run {run["name"]}: {message.split(". Other fields")[0]}. {hint}'.strip()) from None
  return cfg


def receptive_field_px(run: dict) -> int:
  """Receptive field of the run's whole network in input pixels (front end, then context module if any)."""
  cfg = run_config(run)
  model = build_model(cfg.model, with_context=cfg.stage != 'frontend')
  layers = model.front_end.layers() + (model.context_module.layers() if model.context_module else [])
  return rf.receptive_field(layers)[0]


def summarise(runs: list[dict], workdir: str) -> list[dict]:
  """Per group (and 'GROUP + CRF' of runs with crf): receptive field, mIoU and boundary mIoU mean / std over seeds,
  the per-seed values, per-class mean IoU."""
  groups = {}
  for run in runs:
    for suffix, group in (('', run['group']), ('_crf', f'{run["group"]} + CRF')):
      path = os.path.join(workdir, run['name'], 'eval', f'{SPLIT}_best{suffix}.json')
      if not os.path.exists(path):
        continue
      with open(path) as f:
        result = json.load(f)
      if group not in groups:  # the receptive field builds the network: once per group
        groups[group] = dict(group=group, receptive_field=receptive_field_px(run), miou=[], seeds=[], iou=[],
                             boundary=[])
      g = groups[group]
      g['miou'].append(100 * result['miou'])
      g['boundary'].append(100 * result['boundary_miou'] if 'boundary_miou' in result else np.nan)
      g['seeds'].append(run['seed'])
      g['iou'].append({k: 100 * v if v is not None else np.nan for k, v in result['iou'].items()})
  for g in groups.values():
    g['mean'], g['std'] = mean_std(g['miou'])
    g['boundary_mean'], g['boundary_std'] = mean_std(g['boundary'])
    g['class_mean'] = {k: float(np.nanmean([i[k] for i in g['iou']])) for k in g['iou'][0]}
  return list(groups.values())


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value) over seeds."""
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.


def write_results(groups: list[dict], workdir: str, title: str):
  """results.md, results.csv and the plot of mIoU against receptive field."""
  classes = list(groups[0]['class_mean'])
  header = ['group', 'receptive field (px)', 'mIoU mean', 'mIoU std', 'seeds', 'per seed', 'boundary mIoU mean',
            'boundary mIoU std'] + classes
  rows = [[g['group'], g['receptive_field'], f'{g["mean"]:.1f}', f'{g["std"]:.1f}', len(g['miou']),
           ' '.join(f'{v:.1f}' for v in g['miou']), f'{g["boundary_mean"]:.1f}', f'{g["boundary_std"]:.1f}']
          + [f'{g["class_mean"][c]:.1f}' for c in classes] for g in groups]
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    csv.writer(f).writerows([header] + rows)
  md = [f'# {title}', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  md += ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows]
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write('\n'.join(md) + '\n')
  print('\n'.join(md))

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for g in groups:
    ax.errorbar(g['receptive_field'], g['mean'], yerr=g['std'], fmt='o', capsize=4)
    ax.scatter([g['receptive_field']] * len(g['miou']), g['miou'], s=8, color='grey')
    ax.annotate(g['group'], (g['receptive_field'], g['mean']), textcoords='offset points', xytext=(6, 4), fontsize=8)
  ax.set_xlabel('receptive field of the whole network (input pixels)')
  ax.set_ylabel(f'{SPLIT} mIoU (%), mean and std over seeds')
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'miou_vs_receptive_field.png'), dpi=110)


FLAGS = flags.FLAGS


def main(argv):
  del argv
  runs = load_sweep(FLAGS.sweep)
  if FLAGS.print_commands:
    for run in runs:
      print(' && '.join(shlex.join(c) for c in commands(run, FLAGS.workdir)))
    return
  os.makedirs(FLAGS.workdir, exist_ok=True)
  start = time.time()
  for i, run in enumerate(runs, 1):
    done = [os.path.exists(path) for path in outputs(run, FLAGS.workdir)]
    if all(done):
      logging.info('[%d/%d] %s: done before, skipped', i, len(runs), run['name'])
      continue
    logging.info('[%d/%d] %s (%s, seed %d), %.0f s so far', i, len(runs), run['name'], run['group'], run['seed'],
                 time.time() - start)
    for command, finished in zip(commands(run, FLAGS.workdir), done):
      if finished:
        continue
      if subprocess.run(command).returncode:
        raise InputError(f'sweep: run {run["name"]} failed: {shlex.join(command)}')
  groups = summarise(runs, FLAGS.workdir)
  write_results(groups, FLAGS.workdir, os.path.splitext(os.path.basename(FLAGS.sweep))[0])
  print(f'sweep of {len(runs)} runs done in {time.time() - start:.0f} s; results in {FLAGS.workdir}')


if __name__ == '__main__':
  flags.DEFINE_string('sweep', None, 'sweep file (defines get_sweep())', required=True)
  flags.DEFINE_string('workdir', None, 'one workdir per run goes below this', required=True)
  flags.DEFINE_bool('print_commands', False, 'print one command line per run instead of running them')
  cli.run(main)
