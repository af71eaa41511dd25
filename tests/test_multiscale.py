"""Multi-scale and flip testing (fyu/drn segment.py --ms, test_ms): the single scale is today's evaluation, several
scales and the mirror are the sum of each pass's log-probabilities resized back, bad settings are one line."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from dilated_jax import InputError, config as config_lib, dense_crf
from dilated_jax.data.info import DATASETS, IGNORE_LABEL
from dilated_jax.inference import check_test_time, evaluate, result_suffix
from test_evaluate import pixel_scores_setup  # PixelScores: a cell's scores, linear in its block's first pixel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_predictor(mode='zoom'):
  """test_evaluate's camvid predictor whose network is PixelScores (margin 186, stride 8), its parameters and three
  labelled 40 x 48 images."""
  return pixel_scores_setup(np.random.default_rng(3), mode)


def test_one_scale_without_flip_is_the_single_scale_evaluation_exactly():
  """scales (1.0,) through the multi-scale path (host argmax of log-probabilities) counts exactly what the on-device
  single-scale evaluation counts, boundary band included; the result records its scales and flip."""
  predictor, params, info, pairs = tiny_predictor()
  plain = evaluate(predictor, params, pairs, info, batch_size=2, boundary_width=2)
  ms = evaluate(predictor, params, pairs, info, batch_size=2, boundary_width=2, scales=(1.0,), flip=False)
  assert ms['confusion'] == plain['confusion'] and ms['boundary_miou'] == plain['boundary_miou']
  assert np.sum(plain['confusion']) == sum(int((label != IGNORE_LABEL).sum()) for _, label in pairs)
  assert (plain['scales'], plain['flip']) == ([1.0], False) and (ms['scales'], ms['flip']) == ([1.0], False)


def reference_log_probabilities(predictor, params, image, scales, flip):
  """From fyu/drn test_ms by loops: per scale, the image resized to int(w s) x int(h s) bicubic (and mirrored), its
  probabilities, their log, mirrored back, each class resized bilinear to the image, all summed."""
  h, w = image.shape[:2]
  total = np.zeros((h, w, DATASETS['camvid'].num_classes), np.float64)
  for s in scales:
    scaled = np.asarray(Image.fromarray(image).resize((int(w * s), int(h * s)), Image.BICUBIC)) if s != 1 else image
    for mirror in ([False, True] if flip else [False]):
      x = scaled[:, ::-1].copy() if mirror else scaled
      logp = np.log(predictor.probabilities(params, [x])[0].astype(np.float64))
      if mirror:
        logp = logp[:, ::-1]
      for k in range(total.shape[-1]):
        channel = Image.fromarray(logp[..., k].astype(np.float32))
        same = logp.shape[:2] == (h, w)
        total[..., k] += logp[..., k] if same else np.asarray(channel.resize((w, h), Image.BILINEAR))
  return total


@pytest.mark.parametrize('mode', ['zoom', 'deconv'])
def test_scales_and_flip_sum_the_resized_log_probabilities(mode):
  """Through each upsampling: scales 0.5, 0.75, 1.25 with the mirror equal the loop reference above, the image's
  labels are its argmax, and they differ from the single scale's (the path is not the identity)."""
  predictor, params, info, pairs = tiny_predictor(mode)
  scales = (0.5, 0.75, 1.25)
  images = [image for image, _ in pairs]
  ours = predictor.multiscale_log_probabilities(params, images, scales, flip=True)
  refs = [reference_log_probabilities(predictor, params, image, scales, True) for image in images]
  for o, r in zip(ours, refs):
    assert o.shape == r.shape
    np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-3)
  result = evaluate(predictor, params, pairs, info, batch_size=2, scales=scales, flip=True)
  c = info.num_classes
  want = sum(np.bincount(c * label[label != IGNORE_LABEL].astype(int) + r.argmax(-1)[label != IGNORE_LABEL],
                         minlength=c * c).reshape(c, c) for (_, label), r in zip(pairs, refs))
  np.testing.assert_array_equal(result['confusion'], want)
  assert (result['scales'], result['flip']) == ([0.5, 0.75, 1.25], True)
  single = evaluate(predictor, params, pairs, info, batch_size=2)
  assert single['confusion'] != result['confusion']


@pytest.mark.parametrize('scales,flip,field', [
    ((), False, 'eval.scales'), ((1.0, 0.0), False, 'eval.scales'), ((-0.5,), False, 'eval.scales'),
    ('1.0', False, 'eval.scales'), ((float('nan'),), False, 'eval.scales'), ((True,), False, 'eval.scales'),
    ((1.0,), 'yes', 'eval.flip'),
])
def test_bad_scales_or_flip_is_an_error_naming_the_field(scales, flip, field):
  with pytest.raises(InputError, match=field):
    check_test_time(scales, flip)


def test_multiscale_with_the_dense_crf_is_refused_and_file_names_differ():
  predictor, params, info, pairs = tiny_predictor()
  with pytest.raises(InputError, match='eval.scales'):
    evaluate(predictor, params, pairs, info, batch_size=2, scales=(0.5, 1.0), crf=dense_crf.DenseCRFParams())
  names = {result_suffix(s, f) for s, f in [((1.0,), False), ((0.5, 1.0), False), ((1.0,), True),
                                                ((0.5, 1.0), True)]}
  assert names == {'', '_ms', '_flip', '_ms_flip'}


@pytest.mark.slow
def test_evaluate_with_an_empty_scale_list_is_one_line(tmp_path):
  """The entry point checks eval.scales before restoring anything: one line naming the field, exit 2."""
  workdir = tmp_path / 'w'
  workdir.mkdir()
  cfg = config_lib.load(os.path.join(ROOT, 'experiments/synthetic.py:stage=frontend'))
  (workdir / 'config.json').write_text(json.dumps(json.loads(cfg.to_json())))
  for flag, field in (('--config.eval.scales=()', 'eval.scales'), ('--config.eval.scales=(1.0,-2.0)', 'eval.scales')):
    r = subprocess.run([sys.executable, '-m', 'dilated_jax.evaluate', f'--workdir={workdir}', flag], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith('error: ') and field in last, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr
