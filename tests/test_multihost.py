"""Two processes of 4 CPU devices each (jax.distributed on localhost) train what one process of 8 devices does.

Each process reads only its rows of every global batch, only process 0 writes logs, a SIGTERM to one process stops
both at the same step with a checkpoint, both restore it, and one process of 8 devices resumes it.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from dilated_jax import checkpoint
from dilated_jax.data import pipeline

pytestmark = pytest.mark.slow  # every test here trains or runs entry points (README, "Tests")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ['--config=experiments/synthetic.py:stage=frontend', '--config.data.synthetic.image_size=32',
         '--config.data.synthetic.frame_width=2', '--config.data.synthetic.frame_distance=4',
         '--config.data.synthetic.disc_radius=3', '--config.data.synthetic.train_size=16',
         '--config.data.synthetic.val_size=8', '--config.model.front_end.block_channels=(4,8)',
         '--config.model.front_end.fc_channels=8', '--config.model.front_end.dropout_rate=0.5',
         '--config.eval.tile=(32,32)', '--config.total_steps=8', '--config.log_every=1', '--config.eval_every=3',
         '--config.checkpoint_every=3', '--config.data.workers=2']


def launch(workdir, devices, cache, *extra):
  # A persistent compilation cache shared by the runs: only the first of each topology compiles.
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return subprocess.Popen([sys.executable, '-m', 'dilated_jax.train', *FLAGS, f'--workdir={workdir}', *extra],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def launch_two(workdir, cache, *extra):
  address = f'127.0.0.1:{free_port()}'
  return [launch(workdir, 4, cache, *extra, '--multihost', f'--coordinator_address={address}', '--num_processes=2',
                 f'--process_id={i}') for i in range(2)]


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def first_records(log):
  """The training records a process logged reading for its rows of its first global batch."""
  return json.loads(re.search(r'its rows of the first batch are the training records (\[[\d, ]*\])', log).group(1))


def test_two_processes_compute_what_one_process_does(tmp_path):
  cache = tmp_path / 'compilation_cache'
  single = launch(tmp_path / 'single', 8, cache)
  _, err = single.communicate(timeout=600)
  assert single.returncode == 0, err[-3000:]

  # Two processes; SIGTERM to process 1 alone once process 0 has logged step 1: JAX's preemption service tells both,
  # both write the checkpoint of the same step and exit.
  multi = tmp_path / 'multi'
  procs = launch_two(multi, cache)
  seen = []
  for line in procs[0].stderr:
    seen.append(line)
    if 'step 1/8' in line:
      break
  procs[1].send_signal(signal.SIGTERM)
  errs = [p.communicate(timeout=600)[1] for p in procs]
  errs[0] = ''.join(seen) + errs[0]
  assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, errs[1][-3000:]
  stopped = {int(re.search(r'checkpoint at step (\d+) written', e).group(1)) for e in errs}
  assert len(stopped) == 1, stopped
  stop = stopped.pop()
  assert stop < 6 and checkpoint.steps(multi)[-1] == stop and set(checkpoint.steps(multi)) <= {3, stop}
  # each process read its own rows of the global batch, and only those
  batch = pipeline.example_indices(0, 8, 16, 0).tolist()
  assert [first_records(e) for e in errs] == [batch[:4], batch[4:]]

  # Both processes restore it and go on to step 6.
  procs = launch_two(multi, cache, '--config.total_steps=6')
  errs = [p.communicate(timeout=600)[1] for p in procs]
  for p, e in zip(procs, errs):
    assert p.returncode == 0, e[-3000:]
    assert f'resumed from {checkpoint.step_dir(multi, stop)}' in e
  batch = pipeline.example_indices(stop, 8, 16, 0).tolist()
  assert [first_records(e) for e in errs] == [batch[:4], batch[4:]]
  assert 'step 6/6' in errs[0] and not re.search(r'step \d+/\d+ ', errs[1])  # progress from process 0 only

  # One process of 8 devices resumes the checkpoint the two wrote, to step 8.
  one = launch(multi, 8, cache)
  _, err = one.communicate(timeout=600)
  assert one.returncode == 0 and f'resumed from {checkpoint.step_dir(multi, 6)}' in err, err[-3000:]

  a = checkpoint.load_params(str(tmp_path / 'single'))
  b = checkpoint.load_params(str(multi))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  # Only process 0 writes metrics.jsonl: every step once (the lines past a checkpoint, computed again by the
  # resumed run, are replaced).
  lines = [json.loads(line) for line in (multi / 'metrics.jsonl').read_text().splitlines()]
  assert [x['step'] for x in lines if x['kind'] == 'train'] == list(range(1, 9))
