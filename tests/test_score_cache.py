"""The context stage's score cache: written one image at a time, read by offset in bounded memory, checked before it
is read, set aside and computed again when damaged, shared by runs that race to write it."""

import io
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import tracemalloc

import jax
import numpy as np
import pytest

from dilated_jax import InputError, config, score_cache, sharding
from dilated_jax import data as datasets
from dilated_jax.data import pipeline
from dilated_jax.data.info import IGNORE_LABEL
from dilated_jax.inference import Predictor
from dilated_jax.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_cache(path, n, h=6, w=7, c=5, seed=0):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(n, h, w, c)).astype(np.float32)
  labels = rng.integers(0, c, (n, h, w)).astype(np.uint8)
  labels[rng.random((n, h, w)) < 0.2] = IGNORE_LABEL
  writer = score_cache.CacheWriter(str(path), (n, h, w, c))
  for s, lab in zip(scores, labels):
    writer.append(s, lab)
  writer.close()
  return scores, labels


def test_written_images_read_back_equal_also_after_pickling(tmp_path):
  scores, labels = write_cache(tmp_path / 'c', 9)
  cache = score_cache.ScoreCache(str(tmp_path / 'c'))
  assert len(cache) == 9
  for i in range(9):
    x, y = cache[i]
    assert x.dtype == np.float32 and y.dtype == np.uint8
    np.testing.assert_array_equal(x, scores[i])
    np.testing.assert_array_equal(y, labels[i])
  blob = pickle.dumps(cache)
  assert len(blob) < 500  # the path, not the arrays
  copy = pickle.loads(blob)  # what a grain worker gets: it opens the files itself
  np.testing.assert_array_equal(copy[8][0], scores[8])
  assert np.load(tmp_path / 'c' / 'scores.npy').shape == (9, 6, 7, 5)  # plain .npy files
  with pytest.raises(IndexError):
    cache[9]


def test_examples_of_the_context_stage_are_the_cached_maps_flipped_or_not(tmp_path):
  scores, labels = write_cache(tmp_path / 'c', 3)
  make = pipeline.ScoreExamples(score_cache.ScoreCache(str(tmp_path / 'c')), flip=True)
  flips = set()
  for seed in range(8):
    ex = make(1, np.random.default_rng(seed))
    flipped = not np.array_equal(ex['image'], scores[1])
    flips.add(flipped)
    np.testing.assert_array_equal(ex['image'], scores[1][:, ::-1] if flipped else scores[1])
    np.testing.assert_array_equal(ex['label'], labels[1][:, ::-1] if flipped else labels[1])
    assert ex['label'].dtype == np.int32
  assert flips == {True, False}


def test_truncated_cache_is_one_line_naming_the_file(tmp_path):
  write_cache(tmp_path / 'c', 4)
  path = tmp_path / 'c' / 'scores.npy'
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 10)
  with pytest.raises(InputError, match='truncated') as e:
    score_cache.ScoreCache(str(tmp_path / 'c'))
  assert str(path) in str(e.value) and '\n' not in str(e.value)


def npy_bytes(shape, descr='<f4', fortran=False):
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, {'descr': descr, 'fortran_order': fortran, 'shape': shape})
  return buf.getvalue()


@pytest.mark.parametrize('content,match', [
    (npy_bytes((10**12, 128, 256, 19)) + b'\0' * 64, 'truncated'),  # 10^21 bytes declared
    (npy_bytes((0, 10**9, 10**9, 19)) + b'\0' * 64, 'longer than its array'),
    (npy_bytes((1, 2, 2, 1), fortran=True) + b'\0' * 16, 'C-order'),
    (npy_bytes((1, 2, 2, 1), descr='<f8') + b'\0' * 32, 'float32'),
    (npy_bytes((1, 2, 2)) + b'\0' * 16, '4 dimensions'),
    (b'\x93NUMPY\x02\x00' + (2**31).to_bytes(4, 'little') + b'{', 'not a readable'),  # a 2 GB header announced
    (b'not a numpy file at all', 'not a readable'),
])
def test_hostile_or_foreign_header_is_refused_before_anything_is_allocated(tmp_path, content, match):
  write_cache(tmp_path / 'c', 1, 2, 2, 1)
  path = tmp_path / 'c' / 'scores.npy'
  path.write_bytes(content)
  tracemalloc.start()
  try:
    with pytest.raises(InputError, match=match) as e:
      score_cache.ScoreCache(str(tmp_path / 'c'))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 1 << 20
  assert str(path) in str(e.value) and '\n' not in str(e.value)


def test_labels_that_do_not_match_their_scores_are_refused(tmp_path):
  write_cache(tmp_path / 'a', 3)
  write_cache(tmp_path / 'b', 4)
  shutil.copy(tmp_path / 'b' / 'labels.npy', tmp_path / 'a' / 'labels.npy')
  with pytest.raises(InputError, match='do not match'):
    score_cache.ScoreCache(str(tmp_path / 'a'))


# A context stage's epoch over a cache that memory would not comfortably hold whole, in a process of its own (the
# test process's memory would blur the figure): the writer and the reader (ScoreExamples through the pipeline, as
# training reads it) must each stay within a few batches.
BOUNDED = textwrap.dedent('''
    import os, sys
    import grain  # noqa: F401 - imported by the pipeline: its modules are not the cache's memory
    import numpy as np
    from dilated_jax import score_cache
    from dilated_jax.data import pipeline

    def rss():
      return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024

    path, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    h, w, c = 128, 256, 19  # one Cityscapes map, 2.5 MB
    base = rss()
    writer = score_cache.CacheWriter(path, (n, h, w, c))
    label = np.arange(h * w, dtype=np.int64).reshape(h, w) % c
    for i in range(n):
      writer.append(np.full((h, w, c), i, np.float32), label)
    writer.close()
    wrote = rss() - base
    cache = score_cache.ScoreCache(path)
    base, grown, seen = rss(), 0, set()
    make = pipeline.ScoreExamples(cache, flip=True)
    steps = n // batch
    for b in pipeline.batches(make, n, global_batch=batch, seed=0, start_step=0, stop_step=steps):
      assert b['image'].shape == (batch, h, w, c) and b['label'].shape == (batch, h, w)
      seen.update(int(v) for v in b['image'][:, 0, 0, 0])
      grown = max(grown, rss() - base)
    assert seen == set(range(steps * batch)), 'every image read once'
    print(wrote, grown, max(grown, rss() - base))
''')


def test_an_epoch_over_a_large_cache_stays_within_a_few_batches_of_memory(tmp_path):
  n, batch = 400, 20  # 1.0 GB of scores, batches of 50 MB
  path = tmp_path / 'big'
  env = dict(os.environ, PYTHONPATH=ROOT)
  try:
    r = subprocess.run([sys.executable, '-c', BOUNDED, str(path), str(n), str(batch)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    wrote, peak, after = (int(v) for v in r.stdout.split())
  finally:
    shutil.rmtree(path, ignore_errors=True)
  size = n * 128 * 256 * 19 * 4
  assert wrote < 100e6, f'writing a {size / 1e9:.1f} GB cache grew the process by {wrote / 1e6:.0f} MB'
  # The batches in flight (the pipeline's buffer, the one being stacked, the one handed out): ~5 x 50 MB at most.
  assert max(peak, after) < 350e6, f'an epoch over a {size / 1e9:.1f} GB cache grew the process by {peak / 1e6:.0f} MB'


# --- computing the cache: a tiny front end on the built-in scenes

def tiny():
  cfg = config.load(os.path.join(ROOT, 'experiments/synthetic.py:stage=context'))
  cfg.data.synthetic.update(image_size=32, train_size=5, num_objects=1, disc_radius=3, frame_width=2,
                            frame_distance=4)
  cfg.model.front_end.update(block_channels=(4, 8), fc_channels=8)
  cfg.eval.tile = (16, 16)  # 2x2 tiles per scene
  return cfg


@pytest.fixture(scope='module')
def front_end():
  cfg = tiny()
  info = datasets.dataset_info(cfg.data)
  mesh = sharding.make_mesh(jax.devices()[:2])
  predictor = Predictor(cfg.model, info, cfg.eval.tile, mesh, with_context=False,
                        tiles_per_device=cfg.eval.tiles_per_device)
  params = jax.jit(build_model(cfg.model, with_context=False).init)(jax.random.key(0), np.zeros((1, 40, 40, 3)))
  return cfg, predictor, params['params'], datasets.get_source(cfg.data, 'train')


def scores_one_by_one(predictor, params, source):
  """What the cache must hold, image by image: the stitched front-end map and the label at stride s."""
  apply = jax.jit(lambda x: predictor.model.apply({'params': params}, x))
  out = []
  for i in range(len(source)):
    image, label = source[i]
    grid = predictor.tiling.grid(image.shape[:2])
    tiles = np.asarray(apply(predictor.tiling.tiles(image, grid)))
    nh, nw = grid
    _, h, w, c = tiles.shape
    out.append((tiles.reshape(nh, nw, h, w, c).transpose(0, 2, 1, 3, 4).reshape(nh * h, nw * w, c),
                pipeline.label_slice(label, 0, predictor.stride, (nh * h, nw * w))))
  return out


def test_cache_holds_each_images_stitched_scores_and_a_damaged_one_is_set_aside_and_recomputed(tmp_path, front_end):
  cfg, predictor, params, source = front_end
  cache = score_cache.cached_scores(str(tmp_path), source, predictor, params, cfg.data, batch_size=4)
  want = scores_one_by_one(predictor, params, source)
  assert len(cache) == len(source) == 5  # two batches, the second filled up with blank images
  for i, (x, y) in enumerate(want):
    np.testing.assert_allclose(cache[i][0], x, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache[i][1], y)
  folder = cache.path
  assert os.listdir(os.path.dirname(folder)) == [os.path.basename(folder)]  # no temporary folder left
  # the same front end and data, another number of workers: the same cache
  cfg.data.workers = 3
  assert score_cache.cached_scores(str(tmp_path), source, predictor, params, cfg.data).path == folder
  with open(os.path.join(folder, 'labels.npy'), 'ab') as f:
    f.write(b'\0')  # damaged
  again = score_cache.cached_scores(str(tmp_path), source, predictor, params, cfg.data)
  assert again.path == folder
  np.testing.assert_array_equal(again[4][0], cache[4][0])
  aside = [e for e in os.listdir(os.path.dirname(folder)) if '.corrupt.' in e]
  assert len(aside) == 1  # moved, not deleted


def test_a_run_that_loses_the_race_to_write_the_cache_uses_the_winners(tmp_path, front_end, monkeypatch):
  cfg, predictor, params, source = front_end
  compute = score_cache._compute
  winner = tmp_path / 'winner'
  write_cache(winner, len(source), 16, 16, 5)  # another run's copy (other values, to tell them apart)

  def compute_while_another_run_finishes(tmp, *args):
    compute(tmp, *args)
    shutil.copytree(winner, score_cache.cache_path(str(tmp_path), predictor.tiling, params, cfg.data, source))

  monkeypatch.setattr(score_cache, '_compute', compute_while_another_run_finishes)
  cache = score_cache.cached_scores(str(tmp_path), source, predictor, params, cfg.data)
  np.testing.assert_array_equal(cache[2][0], score_cache.ScoreCache(str(winner))[2][0])
  assert os.listdir(os.path.dirname(cache.path)) == [os.path.basename(cache.path)]  # its own copy dropped


def test_images_that_give_maps_of_several_sizes_are_refused_and_nothing_is_left(tmp_path, front_end):
  cfg, predictor, params, source = front_end

  class TwoSizes:
    def __len__(self):
      return 3

    def __getitem__(self, i):
      image, label = source[i]
      return (image, label) if i < 2 else (image[:, :16], label[:, :16])  # 2x1 tiles, not 2x2

  with pytest.raises(InputError, match='one size'):
    score_cache.cached_scores(str(tmp_path), TwoSizes(), predictor, params, cfg.data, batch_size=2)
  assert os.listdir(tmp_path / 'features') == []


def test_a_dataset_prepared_again_gets_another_cache(tmp_path, front_end):
  """The key covers the prepared split's files: a re-prepared dataset (new labels, say) never reads stale scores,
  while the same files opened again share the cache."""
  import dataset_fixtures as fixtures
  from dilated_jax.data import builder, camvid

  cfg, predictor, params, _ = front_end
  fixtures.write_camvid_segnet(str(tmp_path / 'raw'))
  data = tmp_path / 'data'
  builder.prepare(camvid.Builder, str(tmp_path / 'raw'), str(data))
  key = lambda: score_cache.cache_path(str(tmp_path), predictor.tiling, params, cfg.data,  # noqa: E731
                                       builder.open_split(camvid.Builder, str(data), 'train'))
  first = key()
  assert key() == first
  shutil.rmtree(data)
  builder.prepare(camvid.Builder, str(tmp_path / 'raw'), str(data))
  assert key() != first
