"""The paper's datasets: each is prepared from a tiny copy in its released layout and read back as the copy holds
it, label mapping included; missing files, broken files and interrupted preparations leave nothing behind; the
check command; and a few real files of ../shared/datasets/camvid where that folder exists.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

import dataset_fixtures as fixtures
from dilated_jax import InputError, config
from dilated_jax import data as datasets
from dilated_jax.data import builder, camvid, check, pipeline
from dilated_jax.data.info import DATASETS, IGNORE_LABEL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_CAMVID = os.path.join(os.path.dirname(ROOT), 'shared', 'datasets', 'camvid')


def data_cfg(name, data_dir, train_set=''):
  cfg = config.base(name).data
  cfg.update(dir=str(data_dir), train_set=train_set)
  return cfg


def prepare(name, manual, data_dir):
  return builder.prepare(datasets.builder_class(name), str(manual), str(data_dir))


def read_split(source):
  """{name: (image, label)} of a split, in record order."""
  return {source.inspect(i)[0]: source[i] for i in range(len(source))}


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """Every dataset written in its released layout and prepared into one data dir: (data_dir, expected)."""
  base = tmp_path_factory.mktemp('datasets')
  expected = {}
  for name, write in fixtures.WRITERS.items():
    expected[name] = write(str(base / 'manual' / name))
    counts = prepare(name, base / 'manual' / name, base / 'data')
    assert counts == {split: len(examples) for split, examples in expected[name].items()}
  return base / 'data', expected


@pytest.mark.parametrize('name', ['pascal_voc', 'camvid', 'kitti', 'cityscapes'])
def test_prepared_dataset_reads_back_the_images_and_mapped_labels_of_its_files(prepared, name):
  data_dir, expected = prepared
  for split, want in expected[name].items():
    source = datasets.get_source(data_cfg(name, data_dir, 'sbd' if name == 'pascal_voc' else ''), split)
    got = read_split(source)
    assert list(got) == list(want), split  # the release's order: list order, else sorted names
    for image_name, (image, label) in want.items():
      got_image, got_label = got[image_name]
      assert got_image.dtype == np.uint8 and got_image.shape == image.shape
      np.testing.assert_array_equal(got_image, image, err_msg=f'{name} {split} {image_name}')
      assert got_label.dtype == np.uint8 and got_label.shape == image.shape[:2]
      np.testing.assert_array_equal(got_label, label, err_msg=f'{name} {split} {image_name}')


def test_voc_training_set_is_voc_train_and_sbd_without_any_val_image(prepared):
  data_dir, expected = prepared
  cfg = data_cfg('pascal_voc', data_dir, 'sbd')
  train = {datasets.get_source(cfg, 'train').inspect(i)[0] for i in range(4)}
  val = {datasets.get_source(cfg, 'val').inspect(i)[0] for i in range(2)}
  assert train == {'2007_000001', '2007_000002', '2008_000005', '2008_000006'} and not train & val
  # 2007_000001 is annotated by both: VOC's palette PNG (with its 255 borders) wins over SBD's .mat
  assert (expected['pascal_voc']['train']['2007_000001'][1] == IGNORE_LABEL).any()


def test_voc_from_segmentation_class_aug_and_train_aug_list(tmp_path):
  expected = fixtures.write_voc_sbd(str(tmp_path / 'voc'), sbd='aug')
  assert prepare('pascal_voc', tmp_path / 'voc', tmp_path / 'data') == {'train': 4, 'val': 2}
  got = read_split(datasets.get_source(data_cfg('pascal_voc', tmp_path / 'data', 'sbd'), 'train'))
  assert set(got) == set(expected['train'])  # the val image 2007_000003 in train_aug.txt is left out
  for image_name, (image, label) in expected['train'].items():
    np.testing.assert_array_equal(got[image_name][0], image)
    np.testing.assert_array_equal(got[image_name][1], label)


def test_coco_keeps_images_with_voc_classes_and_rasterises_their_instances(prepared):
  data_dir, expected = prepared
  source = builder.open_split(datasets.builder_class('coco'), str(data_dir), 'train')
  got = read_split(source)
  want = expected['coco']['train']
  assert set(got) == set(want)  # the giraffe-only image is left out
  for image_name, (image, label, known) in want.items():
    np.testing.assert_array_equal(got[image_name][0], image)  # the greyscale JPEG comes back as RGB
    np.testing.assert_array_equal(got[image_name][1][known], label[known], err_msg=image_name)
  person, dog, sofa = (DATASETS['pascal_voc'].class_names.index(c) for c in ('person', 'dog', 'sofa'))
  label = got['COCO_train2014_000000000001'][1]
  assert {person, dog, sofa, IGNORE_LABEL, 0} <= set(np.unique(label))


def test_voc_coco_train_set_trains_on_voc_sbd_then_coco(prepared):
  data_dir, expected = prepared
  train = datasets.get_source(data_cfg('pascal_voc', data_dir, 'coco'), 'train')
  names = [train.inspect(i)[0] for i in range(len(train))]
  assert names == sorted(expected['pascal_voc']['train']) + sorted(expected['coco']['train'])
  np.testing.assert_array_equal(train[len(train) - 1][0], expected['coco']['train'][names[-1]][0])
  assert len(datasets.get_source(data_cfg('pascal_voc', data_dir, 'coco'), 'val')) == 2  # val stays VOC's


def test_camvid_original_release_is_mapped_from_its_colours_and_resized_to_640x480(tmp_path):
  expected = fixtures.write_camvid_original(str(tmp_path / 'CamVid'))
  assert prepare('camvid', tmp_path / 'CamVid', tmp_path / 'data') == {'train': 2, 'val': 1, 'test': 1}
  got = read_split(datasets.get_source(data_cfg('camvid', tmp_path / 'data'), 'train'))
  for image_name, (image, label) in expected['train'].items():
    got_image, got_label = got[image_name]
    assert got_image.shape == (480, 640, 3) and got_label.shape == (480, 640)
    np.testing.assert_array_equal(got_label, pipeline.resize_nearest(label, (640, 480)))
    np.testing.assert_array_equal(got_image, np.asarray(Image.fromarray(image).resize((640, 480),
                                                                                       Image.Resampling.BICUBIC)))
    assert set(np.unique(got_label)) == set(range(11)) | {IGNORE_LABEL}  # every group and void survive


def test_resize_nearest_reads_the_pixel_under_each_output_centre():
  label = np.arange(12, dtype=np.uint8).reshape(3, 4)
  np.testing.assert_array_equal(pipeline.resize_nearest(label, (8, 6)), np.kron(label, np.ones((2, 2), np.uint8)))
  np.testing.assert_array_equal(pipeline.resize_nearest(label, (2, 3)), label[:, [0, 2]] + 1)


# ------------------------------------------------------------------ missing, broken, interrupted


def test_unprepared_dataset_is_one_line_naming_data_dir_and_the_preparation(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    datasets.get_source(data_cfg('cityscapes', tmp_path / 'nope'), 'train')
  message = str(e.value)
  assert '\n' not in message and 'data.dir' in message and str(tmp_path / 'nope') in message
  assert 'python -m dilated_jax.data.prepare --dataset=cityscapes' in message
  with pytest.raises(InputError, match='data.train_set'):
    datasets.get_source(data_cfg('pascal_voc', tmp_path, ''), 'train')


# A file each dataset cannot do without: removing it must stop the preparation before anything is written.
MISSING = {
    'pascal_voc': 'VOCdevkit/VOC2012/SegmentationClass/2007_000004.png',
    'coco': 'train2014/COCO_train2014_000000000003.jpg',
    'camvid': 'testannot/0001TP_008550.png',
    'kitti': 'Validation_07/GT/000003.png',
    'cityscapes': 'gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png',
}


@pytest.mark.parametrize('name', sorted(MISSING))
def test_half_copied_dataset_names_what_is_missing_and_writes_nothing(tmp_path, name):
  fixtures.WRITERS[name](str(tmp_path / 'manual'))
  os.remove(tmp_path / 'manual' / MISSING[name])
  with pytest.raises(FileNotFoundError) as e:
    prepare(name, tmp_path / 'manual', tmp_path / 'data')
  assert str(tmp_path / 'manual' / MISSING[name]) in str(e.value) and '\n' not in str(e.value)
  assert not (tmp_path / 'data').exists()


def test_missing_folder_on_the_command_line_is_one_line_and_exit_code_2(tmp_path):
  fixtures.write_camvid_segnet(str(tmp_path / 'CamVid'))
  shutil.rmtree(tmp_path / 'CamVid' / 'valannot')
  run = subprocess.run([sys.executable, '-m', 'dilated_jax.data.prepare', '--dataset=camvid',
                        f'--manual_dir={tmp_path / "CamVid"}', f'--data_dir={tmp_path / "data"}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 2, run.stderr[-2000:]
  assert 'Traceback' not in run.stderr
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and str(tmp_path / 'CamVid' / 'valannot') in last, last
  assert not (tmp_path / 'data').exists()


def test_broken_file_midway_stops_the_build_and_leaves_no_half_built_dataset(tmp_path):
  fixtures.write_camvid_segnet(str(tmp_path / 'CamVid'))
  broken = tmp_path / 'CamVid' / 'valannot' / '0016E5_07959.png'
  broken.write_bytes(broken.read_bytes()[:60])  # a truncated copy
  (tmp_path / 'data').mkdir()  # an existing data dir with another dataset in it stays as it was
  (tmp_path / 'data' / 'other').mkdir()
  with pytest.raises(InputError, match=str(broken)):
    prepare('camvid', tmp_path / 'CamVid', tmp_path / 'data')
  assert sorted(os.listdir(tmp_path / 'data')) == ['other']


def test_interrupted_preparation_leaves_nothing_and_a_rerun_completes(tmp_path, monkeypatch):
  fixtures.write_kitti(str(tmp_path / 'kitti'))
  encode, calls = builder.encode, []

  def interrupted(ex):
    calls.append(ex.name)
    if len(calls) == 2:
      raise KeyboardInterrupt  # Ctrl-C, or SIGTERM in the prepare command
    return encode(ex)

  monkeypatch.setattr(builder, 'encode', interrupted)
  with pytest.raises(KeyboardInterrupt):
    prepare('kitti', tmp_path / 'kitti', tmp_path / 'data')
  assert not (tmp_path / 'data').exists()
  monkeypatch.setattr(builder, 'encode', encode)
  assert prepare('kitti', tmp_path / 'kitti', tmp_path / 'data') == {'train': 2, 'test': 1}
  assert prepare('kitti', tmp_path / 'nope', tmp_path / 'data') == {'train': 2, 'test': 1}  # prepared: reused


# ------------------------------------------------------------------ the check command


def test_check_counts_sizes_and_class_histogram(prepared):
  data_dir, expected = prepared
  cfg = data_cfg('cityscapes', data_dir)
  info = DATASETS['cityscapes']
  results = {s: check.check_split(datasets.get_source(cfg, s), info.num_classes) for s in ('train', 'val', 'test')}
  for split, r in results.items():
    (image, label), = expected['cityscapes'][split].values()
    assert r['images'] == 1 and r['sizes'] == {(fixtures.W, fixtures.H): 1}
    np.testing.assert_array_equal(r['histogram'], np.bincount(label.ravel(), minlength=256))
  assert check.problems(results, info.num_classes) == []
  text = check.report(cfg, results, info)
  assert 'train' in text and 'void (255)' in text and '40x30: 1' in text


def test_check_flags_labels_outside_the_classes(tmp_path):
  fixtures.write_voc_sbd(str(tmp_path / 'voc'), sbd='aug')
  bad = tmp_path / 'voc' / 'VOCdevkit' / 'VOC2012' / 'SegmentationClassAug' / '2008_000005.png'
  label = np.asarray(Image.open(bad)).copy()
  label[0, :3] = 21, 40, 21  # not a VOC class, not void
  Image.fromarray(label, 'L').save(bad)
  prepare('pascal_voc', tmp_path / 'voc', tmp_path / 'data')
  cfg = data_cfg('pascal_voc', tmp_path / 'data', 'sbd')
  results = {'train': check.check_split(datasets.get_source(cfg, 'train'), 21)}
  found = check.problems(results, 21)
  assert found == ['train: labels 21, 40 outside the 21 classes in 1 images (first: 2008_000005)']
  run = subprocess.run([sys.executable, '-m', 'dilated_jax.data.check', '--config=experiments/voc_frontend.py',
                        f'--config.data.dir={tmp_path / "data"}'], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert run.returncode == 2 and 'Traceback' not in run.stderr, run.stderr[-2000:]
  assert 'labels 21, 40 outside the 21 classes' in run.stderr.strip().splitlines()[-1]
  assert 'train' in run.stdout and 'void (255)' in run.stdout


# ------------------------------------------------------------------ real CamVid (SegNet's release)

real_camvid = pytest.mark.skipif(not os.path.isdir(REAL_CAMVID),
                                 reason=f'the real CamVid files are not here ({REAL_CAMVID})')
# Pixels per SegNet index over all 701 labels, from ../shared/datasets/camvid/README.md.
README_PIXELS = [19155369, 29187991, 1195743, 35520717, 8098693, 13548782, 1306195, 1728599, 5623717, 774148,
                 648197, 4344649]


@real_camvid
def test_real_camvid_split_lists_give_the_sturgess_split():
  examples = camvid.Builder.examples(REAL_CAMVID)
  assert {s: len(v) for s, v in examples.items()} == {'train': 367, 'val': 101, 'test': 233}
  assert examples['train'][0].name == '0001TP_006690'
  assert examples['train'][0].label == os.path.join(REAL_CAMVID, 'trainannot', '0001TP_006690.png')


# SegNet index -> the paper's class index (Table 5's order), from the dataset's README; 11 (Unlabelled) is void.
README_SEGNET_TO_PAPER = {0: 2, 1: 0, 2: 8, 3: 5, 4: 9, 5: 1, 6: 4, 7: 7, 8: 3, 9: 6, 10: 10, 11: IGNORE_LABEL}


@real_camvid
def test_real_camvid_prepared_and_read_back_equals_its_files_pixel_for_pixel(tmp_path):
  """Real files through prepare and the training source: every image pixel as the PNG holds it, every label pixel
  the README's mapping of the annotation's pixel at the same place (a flipped, rotated or shifted label fails), and
  the scene the right way up (sky above the road and brighter)."""
  manual = tmp_path / 'CamVid'
  picked = {'train': [0, 200], 'test': [232]}
  lines = {split: open(os.path.join(REAL_CAMVID, f'{split}.txt')).read().split('\n')
           for split in ('train', 'val', 'test')}
  for split, rows in lines.items():  # a few of the real files, linked in the release's layout
    keep = [rows[i] for i in picked.get(split, [0])]
    (manual / split).mkdir(parents=True)
    (manual / f'{split}annot').mkdir()
    for line in keep:
      for path in line.split():
        rel = os.path.join(*path.split('/')[-2:])
        os.symlink(os.path.join(REAL_CAMVID, rel), manual / rel)
    (manual / f'{split}.txt').write_text('\n'.join(keep) + '\n')
  prepare('camvid', manual, tmp_path / 'data')
  lut = np.array([README_SEGNET_TO_PAPER[i] for i in range(12)], np.uint8)
  for split, rows in picked.items():
    source = datasets.get_source(data_cfg('camvid', tmp_path / 'data'), split)
    assert len(source) == len(rows)
    for i in range(len(source)):
      name = source.inspect(i)[0]
      image, label = source[i]
      raw_image = np.asarray(Image.open(os.path.join(REAL_CAMVID, split, f'{name}.png')).convert('RGB'))
      raw_label = np.asarray(Image.open(os.path.join(REAL_CAMVID, f'{split}annot', f'{name}.png')))
      assert image.shape == (360, 480, 3) and label.shape == (360, 480)
      np.testing.assert_array_equal(image, raw_image)
      np.testing.assert_array_equal(label, lut[raw_label])
      sky, road = label == README_SEGNET_TO_PAPER[0], label == README_SEGNET_TO_PAPER[3]
      assert np.nonzero(sky)[0].mean() < np.nonzero(road)[0].mean() and image[sky].mean() > image[road].mean()


@real_camvid
def test_real_camvid_labels_have_the_readme_pixel_counts():
  examples = camvid.Builder.examples(REAL_CAMVID)
  total = sum(np.bincount(np.asarray(Image.open(ex.label)).ravel(), minlength=12)
              for split in examples.values() for ex in split)
  assert total.tolist() == README_PIXELS


@pytest.mark.parametrize('limit', [1000, 500])  # 40x30 = 1,200 px: past PIL's warning (limit) and its error (2 x)
def test_a_decompression_bomb_image_stops_prepare_with_one_line_naming_it(tmp_path, monkeypatch, limit):
  fixtures.write_kitti(str(tmp_path / 'kitti'))
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', limit)  # stands in for a 180 Mpx file of a few hundred bytes
  with pytest.raises(InputError, match=r'kitti/.*\.png: cannot read the image .*decompression bomb'):
    prepare('kitti', tmp_path / 'kitti', tmp_path / 'data')
  assert not (tmp_path / 'data').exists()


def test_a_second_preparation_into_the_same_data_dir_is_told_and_touches_nothing(tmp_path):
  import fcntl

  fixtures.write_kitti(str(tmp_path / 'kitti'))
  running = tmp_path / 'data' / 'kitti' / 'incomplete.ABC_1.0.0'  # what the first one is writing
  running.mkdir(parents=True)
  with open(tmp_path / 'data' / '.kitti.prepare.lock', 'a') as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(InputError, match=r'--data_dir: another preparation of kitti is writing into'):
      prepare('kitti', tmp_path / 'kitti', tmp_path / 'data')
    assert running.is_dir()
  os.remove(tmp_path / 'data' / '.kitti.prepare.lock')
  running.rmdir()
  assert prepare('kitti', tmp_path / 'kitti', tmp_path / 'data') == {'train': 2, 'test': 1}
  assert sorted(os.listdir(tmp_path / 'data')) == ['kitti']  # no lock file left behind
