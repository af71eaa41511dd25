"""What the paper's datasets share: tfds builders over a manual download folder, and the reader of what they wrote.

Each dataset module (voc_sbd, coco, camvid, kitti, cityscapes) says where its files are and how a label file becomes
class ids; this module checks that every file is there, writes the splits as array_record (the only format tfds
writes and reads without TensorFlow, docs/measured.md) and reads them back through `as_data_source`.
A record holds the image as an encoded file (the original bytes when they are an RGB JPEG or PNG), the label as a
PNG of class ids with IGNORE_LABEL for void, and the image's name.
"""

import dataclasses
import functools
import glob
import io
import os
import shutil
import tempfile
from typing import Callable
import warnings

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from dilated_jax import InputError
from dilated_jax.data import pipeline
from dilated_jax.data.info import IGNORE_LABEL, IMAGE_MODES, DatasetInfo


@dataclasses.dataclass(frozen=True)
class Example:
  """One image of a split: its image file, its label (named for messages, read as class ids), an optional size."""
  name: str
  image: str
  label: str
  read_label: Callable[[], np.ndarray]
  size: tuple[int, int] | None = None  # (width, height): image (area / bicubic) and label (nearest) resized to it


def example(name: str, image: str, label: str, read: Callable[[str], np.ndarray], size=None) -> Example:
  """An example whose label is the file `label`, turned into class ids by `read(label)`."""
  return Example(name, image, label, functools.partial(read, label), size)


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A paper dataset read from `--manual_dir`; subclasses set name, INFO, SPLITS, the layout and `examples`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  INFO: DatasetInfo
  SPLITS: tuple[str, ...]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ''  # the expected layout, set by each dataset
  MANUAL_DIR_NAME = ''  # what --manual_dir usually points at, for messages

  @staticmethod
  def examples(manual_dir: str) -> dict[str, list[Example]]:
    """Every split's examples; raises FileNotFoundError naming what is missing."""
    raise NotImplementedError

  def _info(self):
    return self.dataset_info_from_configs(
        description=f'{self.INFO.name}: {self.INFO.num_classes} classes ({", ".join(self.INFO.class_names)}), '
                    f'{IGNORE_LABEL} = void. Expected layout:\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            'name': tfds.features.Text(),
        }),
        disable_shuffling=True)  # records in file order: record i of a split is always the same image

  def _split_generators(self, dl_manager):
    examples = self.examples(os.fspath(dl_manager.manual_dir))
    return {split: self._generate_examples(examples[split]) for split in self.SPLITS}

  def _generate_examples(self, examples):
    for ex in examples:
      yield ex.name, encode(ex)




def encode(ex: Example) -> dict:
  """The record of one example; ValueError naming the file when one cannot be read or the sizes differ."""
  try:
    with warnings.catch_warnings():
      # PIL only warns up to twice its pixel limit (Image.MAX_IMAGE_PIXELS): a file that big is refused here.
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(ex.image) as im:
        if im.mode not in IMAGE_MODES:
          raise InputError(f'expected an 8-bit grey, palette, RGB, RGBA or CMYK image, got {len(im.getbands())} '
                           f'channels of mode {im.mode}')
        im.load()  # decodes everything: a truncated file fails here, not in training
        if im.mode == 'RGB' and im.format in ('JPEG', 'PNG') and ex.size in (None, im.size):
          with open(ex.image, 'rb') as f:
            image_bytes = f.read()
        else:  # grey or CMYK JPEGs (COCO has some), RGBA PNGs, resizing: stored as an RGB PNG
          rgb = im.convert('RGB')
          if ex.size not in (None, rgb.size):
            rgb = rgb.resize(ex.size, Image.Resampling.BOX if ex.size[0] < rgb.size[0] else Image.Resampling.BICUBIC)
          image_bytes = png_bytes(rgb)
        size = ex.size or im.size
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise InputError(f'{ex.image}: cannot read the image ({e})') from e
  try:
    label = np.asarray(ex.read_label())
  except Exception as e:  # noqa: BLE001 - each dataset's reader (PIL, scipy's loadmat) fails in its own way
    raise InputError(f'{ex.label}: cannot read the label ({type(e).__name__}: {e})') from e
  if ex.size is not None:
    label = pipeline.resize_nearest(label, ex.size)
  if label.shape != (size[1], size[0]):
    raise InputError(f'{ex.label}: the label is {label.shape[1]}x{label.shape[0]} px but its image {ex.image} is '
                     f'{size[0]}x{size[1]}')
  return {'image': image_bytes, 'label': png_bytes(Image.fromarray(label.astype(np.uint8), 'L')), 'name': ex.name}


def png_bytes(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return buffer.getvalue()


# ------------------------------------------------------------------ reading label files


def read_index_png(path: str) -> np.ndarray:
  """The class indices of a palette or greyscale label PNG (never its colours); a colour PNG is refused."""
  with Image.open(path) as im:
    if im.mode not in ('P', 'L'):
      raise InputError(f'expected a palette or greyscale PNG of class indices, got mode {im.mode}')
    return np.array(im)


def read_colour_png(path: str, colours: dict[tuple[int, int, int], int]) -> np.ndarray:
  """Class ids of a colour-coded label PNG: `colours` maps RGB to class id; every other colour is IGNORE_LABEL."""
  with Image.open(path) as im:
    rgb = np.asarray(im.convert('RGB')).astype(np.int32)
  code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
  keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colours], np.int32)
  values = np.array(list(colours.values()), np.uint8)
  order = np.argsort(keys)
  pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
  return np.where(keys[order][pos] == code, values[order][pos], IGNORE_LABEL).astype(np.uint8)


def lookup(table: dict[int, int]) -> np.ndarray:
  """A 256-entry uint8 table: id -> table[id], every other id -> IGNORE_LABEL."""
  out = np.full(256, IGNORE_LABEL, np.uint8)
  for k, v in table.items():
    out[k] = v
  return out


# ------------------------------------------------------------------ finding files


def require(paths, what: str):
  """FileNotFoundError naming the first missing path of `paths` (and how many are missing) for `what`."""
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    more = f' (and {len(missing) - 1} more of {len(paths)})' if len(missing) > 1 else ''
    raise FileNotFoundError(f'{what}: {missing[0]} is missing{more}')


def list_names(path: str) -> list[str]:
  """The image names of a split list: the file name without extension of each line's first path.

  Accepts bare names (`2007_000032`), relative paths and lists written with another machine's absolute paths
  (SegNet's CamVid lists: `/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/...`).
  """
  with open(path) as f:
    return [os.path.splitext(os.path.basename(line.split()[0]))[0] for line in f if line.strip()]


# ------------------------------------------------------------------ preparing


def prepare(builder_cls, manual_dir: str, data_dir: str) -> dict[str, int]:
  """Builds the dataset into data_dir from manual_dir (nothing if already there); returns the images per split.

  Every file is checked before anything is written; tfds builds into an `incomplete.*` folder and renames it when
  done, and on any failure this removes what it created, so data_dir never holds a half-built dataset. A lock file
  in data_dir keeps a second preparation of the same dataset out while one runs.
  """
  builder = builder_cls(data_dir=data_dir)
  if not is_prepared(builder):
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f'--manual_dir: {manual_dir} is not a folder; {builder_cls.name} expects '
                              f'{layout_line(builder_cls)}')
    builder.examples(manual_dir)  # fails early, writing nothing, when files are missing
    root = os.path.join(data_dir, builder_cls.name)
    created = [d for d in (data_dir, root) if not os.path.exists(d)]
    os.makedirs(data_dir, exist_ok=True)
    lock = _lock(os.path.join(data_dir, f'.{builder_cls.name}.prepare.lock'), builder_cls.name)
    done = False
    try:
      if not is_prepared(builder):  # the other preparation may have finished while this one checked the files
        for leftover in _incomplete_dirs(root):  # from a run killed with SIGKILL, which no cleanup survives
          shutil.rmtree(leftover)
        try:
          with tempfile.TemporaryDirectory() as downloads:  # nothing is downloaded, but tfds makes the folder
            builder.download_and_prepare(download_dir=downloads, file_format='array_record',
                                         download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        except BaseException:
          for leftover in _incomplete_dirs(root):
            shutil.rmtree(leftover, ignore_errors=True)
          raise
      done = True
    finally:
      os.remove(lock.name)  # while still held, so that no one takes a lock on a file about to go
      lock.close()
      for d in reversed(created if not done else []):
        if os.path.isdir(d) and not os.listdir(d):
          os.rmdir(d)
  return {split: builder.info.splits[split].num_examples for split in builder_cls.SPLITS}


def _lock(path: str, name: str):
  """The open lock file `path`, held exclusively; ValueError when another preparation holds it."""
  import fcntl

  f = open(path, 'a')
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.close()
    raise InputError(f'--data_dir: another preparation of {name} is writing into {os.path.dirname(path)} (it holds '
                     f'{path}); wait for it to finish, then run this again to use what it built') from None
  return f


def is_prepared(builder) -> bool:
  """Whether the builder's version folder is complete (tfds writes dataset_info.json last, then renames it in)."""
  return os.path.isfile(os.path.join(builder.data_dir, 'dataset_info.json'))


def _incomplete_dirs(root):
  return [os.path.join(root, d) for d in os.listdir(root) if d.startswith('incomplete.')] if os.path.isdir(root) else []


def layout_line(builder_cls) -> str:
  """The expected layout on one line (for error messages)."""
  return ' '.join(builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS.split())


# ------------------------------------------------------------------ reading


class Split:
  """A prepared split: `len()` images, `[i]` -> (RGB uint8 (H, W, 3), uint8 label (H, W), IGNORE_LABEL = void).

  `identity`: the name, size and modification time of each of its files: a split prepared again is another one
  (the score cache keys on it).
  """

  def __init__(self, records, name: str, files=()):
    self.records, self.name = records, name
    self.identity = tuple((os.path.basename(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in sorted(files))

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i: int):
    if not 0 <= i < len(self):
      raise IndexError(i)
    record = self.records[i]
    return decode_image(record['image']), decode_label(record['label'])

  def inspect(self, i: int):
    """(name, image size (width, height), label) of record i, decoding only the label (for the check command)."""
    record = self.records[i]
    with Image.open(io.BytesIO(record['image'])) as im:
      size = im.size
    name = record['name']
    return name.decode() if isinstance(name, bytes) else str(name), size, decode_label(record['label'])


class Concat:
  """Splits one after another, read as one (VOC + SBD and COCO for the paper's COCO-trained front end)."""

  def __init__(self, parts):
    self.parts = list(parts)
    self.name = '+'.join(p.name for p in self.parts)
    self.starts = np.cumsum([0] + [len(p) for p in self.parts])
    self.identity = tuple(p.identity for p in self.parts)

  def __len__(self):
    return int(self.starts[-1])

  def _locate(self, i):
    if not 0 <= i < len(self):
      raise IndexError(i)
    part = int(np.searchsorted(self.starts, i, side='right')) - 1
    return self.parts[part], i - int(self.starts[part])

  def __getitem__(self, i: int):
    part, j = self._locate(i)
    return part[j]

  def inspect(self, i: int):
    part, j = self._locate(i)
    return part.inspect(j)


def decode_image(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert('RGB'))


def decode_label(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im)


def open_split(builder_cls, data_dir: str, split: str) -> Split:
  """A split of a prepared dataset in data_dir; one-line errors when it is not prepared or has no such split."""
  builder = builder_cls(data_dir=data_dir)
  if not is_prepared(builder):
    raise FileNotFoundError(
        f'data.dir: {data_dir} holds no prepared {builder_cls.name} dataset ({builder.data_dir} is missing); '
        f'prepare it with `python -m dilated_jax.data.prepare --dataset={builder_cls.name} '
        f'--manual_dir=/path/to/{builder_cls.MANUAL_DIR_NAME} --data_dir={data_dir}`')
  if split not in builder.info.splits:
    raise InputError(f'split: {builder_cls.name} has splits {sorted(builder.info.splits)}, not {split!r}')
  skip = tfds.decode.SkipDecoding()
  records = builder.as_data_source(split=split, decoders={'image': skip, 'label': skip})
  files = glob.glob(os.path.join(builder.data_dir, f'{builder_cls.name}-{split}.*'))
  return Split(records, f'{builder_cls.name}/{split}', files)
