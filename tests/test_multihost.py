"""Two processes of 4 CPU devices each (jax.distributed on localhost) train what one process of 8 devices does."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from dilated_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ['--config=experiments/synthetic.py:stage=frontend', '--config.data.synthetic.image_size=32',
         '--config.data.synthetic.frame_width=2', '--config.data.synthetic.frame_distance=4',
         '--config.data.synthetic.disc_radius=3', '--config.data.synthetic.train_size=16',
         '--config.data.synthetic.val_size=8', '--config.model.front_end.block_channels=(4,8)',
         '--config.model.front_end.fc_channels=8', '--config.model.front_end.dropout_rate=0.5',
         '--config.eval.tile=(32,32)', '--config.total_steps=3', '--config.log_every=1', '--config.eval_every=2',
         '--config.checkpoint_every=2']


def launch(workdir, devices, *extra):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen([sys.executable, '-m', 'dilated_jax.train', *FLAGS, f'--workdir={workdir}', *extra],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_compute_what_one_process_does(tmp_path):
  single = launch(tmp_path / 'single', 8)
  out, err = single.communicate(timeout=600)
  assert single.returncode == 0, err[-3000:]

  address = f'127.0.0.1:{free_port()}'
  procs = [launch(tmp_path / 'multi', 4, '--multihost', f'--coordinator_address={address}', '--num_processes=2',
                  f'--process_id={i}') for i in range(2)]
  results = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]

  a = checkpoint.load_params(str(tmp_path / 'single'))
  b = checkpoint.load_params(str(tmp_path / 'multi'))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  # only process 0 writes logs; both took part in the evaluation and the checkpoints
  lines = (tmp_path / 'multi' / 'metrics.jsonl').read_text().splitlines()
  assert sum('"kind": "train"' in line for line in lines) == 3
  assert 'step 3/3' in results[0][1] and 'step 3/3' not in results[1][1]
