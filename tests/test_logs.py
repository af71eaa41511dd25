"""What a run writes beside its checkpoints: TensorBoard events (purged past the checkpoint a run resumes from),
prediction images at each evaluation, and a jax.profiler trace of the steps asked for."""

import glob
import io
import os
import shutil
import struct

import jax
import numpy as np
from PIL import Image
import pytest
from tensorboardX.proto import event_pb2

from dilated_jax import InputError, checkpoint, images, sharding
from dilated_jax import data as datasets
from dilated_jax.inference import Predictor
from dilated_jax.train import train
from tests.test_train import tiny

pytestmark = pytest.mark.slow  # every test here trains or runs entry points (README, "Tests")


def read_events(folder):
  """Every event of the TFRecord event files in `folder`, file by file in the order they were started: a record is
  its length (uint64), a CRC of it (uint32), the data, a CRC of the data (uint32)."""
  runs = []
  for path in glob.glob(os.path.join(folder, 'events.out.tfevents.*')):
    data, events, at = open(path, 'rb').read(), [], 0
    while at < len(data):
      (length,) = struct.unpack('<Q', data[at:at + 8])
      events.append(event_pb2.Event.FromString(data[at + 12:at + 12 + length]))
      at += 12 + length + 4
    runs.append(events)
  return [e for events in sorted(runs, key=lambda events: events[0].wall_time) for e in events]


def scalars_as_tensorboard_shows_them(events):
  """tag -> steps, as TensorBoard's EventAccumulator keeps them: a session START at step S drops every event of step
  >= S read before it (its `purge_orphaned_data`)."""
  kept = []
  for e in events:
    if e.HasField('session_log') and e.session_log.status == event_pb2.SessionLog.START:
      kept = [(tag, step) for tag, step in kept if step < e.step]
    for v in e.summary.value:
      if v.HasField('simple_value'):
        kept.append((v.tag, e.step))
  out = {}
  for tag, step in kept:
    out.setdefault(tag, []).append(step)
  return out


def test_a_resumed_run_hides_the_events_a_killed_run_wrote_past_its_checkpoint(tmp_path):
  work = str(tmp_path / 'w')
  train(tiny(total_steps=4, checkpoint_every=2, eval_every=2, keep_checkpoints=3), work)
  # Killed after it had logged steps 3 and 4 and evaluated step 4, before step 4's checkpoint was committed:
  shutil.rmtree(os.path.join(work, 'checkpoints', '4'))
  assert scalars_as_tensorboard_shows_them(read_events(os.path.join(work, 'tb')))['train/loss'] == [1, 2, 3, 4]
  train(tiny(total_steps=6, checkpoint_every=2, eval_every=2, keep_checkpoints=3), work)  # resumes from step 2
  shown = scalars_as_tensorboard_shows_them(read_events(os.path.join(work, 'tb')))
  assert shown['train/loss'] == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 once each: the resumed run's
  assert shown['val/miou'] == [2, 4, 6]
  raw = [e.step for e in read_events(os.path.join(work, 'tb')) for v in e.summary.value if v.tag == 'train/loss']
  assert raw.count(3) == 2  # both runs' events are on disk: what TensorBoard shows is what the test read


def test_each_evaluation_draws_its_first_images_with_truth_and_prediction(tmp_path):
  cfg = tiny(total_steps=2, eval_every=1)
  cfg.eval.tensorboard_images = 2
  train(cfg, str(tmp_path / 'w'))
  pictures = {}
  for e in read_events(str(tmp_path / 'w' / 'tb')):
    for v in e.summary.value:
      if v.HasField('image'):
        pictures[(v.tag, e.step)] = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))
  assert sorted(pictures) == [(f'val/prediction_{i}', s) for i in (0, 1) for s in (1, 2)]
  info, source = datasets.dataset_info(cfg.data), datasets.get_source(cfg.data, 'val')
  params = checkpoint.load_params(str(tmp_path / 'w'), 'latest')
  size, gap = cfg.data.synthetic.image_size, 4
  for i in (0, 1):
    image, label = source[i]
    picture = pictures[(f'val/prediction_{i}', 2)]
    assert picture.shape == (size + gap, 3 * (size + gap), 3)
    np.testing.assert_array_equal(picture[:size, :size], image)
    np.testing.assert_array_equal(picture[:size, size + gap:2 * size + gap], images.colourise(label, info.palette))
    # The last evaluation's prediction is that of the final parameters, as predict would draw it.
    predictor = Predictor(cfg.model, info, cfg.eval.tile, sharding.make_mesh(jax.devices()[:1]), with_context=False)
    labels = predictor.probabilities(params, [image])[0].argmax(-1).astype(np.uint8)
    np.testing.assert_array_equal(picture[:size, 2 * (size + gap):2 * (size + gap) + size],
                                  images.colourise(labels, info.palette))


def test_profile_steps_write_a_trace_tensorboard_reads(tmp_path):
  work = tmp_path / 'w'
  train(tiny(total_steps=3, profile_steps=(2, 3)), str(work))
  traces = glob.glob(str(work / 'tb' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 1000, traces
  for steps in ((0, 2), (3, 2), (2,)):
    with pytest.raises(InputError, match=r'^profile_steps: expected \(\) or \(first, last\)'):
      train(tiny(profile_steps=steps), str(tmp_path / 'bad'))
  assert not (tmp_path / 'bad').exists()
