"""Hostile weights files (issue 13): tiny files that declare gigabytes, broken zips, quadratic protobufs, fuzzing.

Every file is written here, byte by byte where zipfile or pickle would refuse to write it. A read must end in a
successful load or in one ValueError / OSError line that names the file (what cli.entry_point prints as `error:`),
in memory bounded by the file's size and in time linear in it.
"""

import collections
import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest

from dilated_jax import InputError, cli, weights
from dilated_jax.data.info import DATASETS
from dilated_jax.models import model_config
from dilated_jax.weights import caffe, importer, torch_pickle
from test_weights import torch_names, write_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = DATASETS['camvid'].mean_bgr
GIB = 1 << 30

# ------------------------------------------------------------------ writing what zipfile and pickle would not


def zip_archive(members) -> bytes:
  """A zip of members {name, payload, method (0 stored, 8 deflate, ...), size, crc, flags, version}, written by hand
  so that a member can declare any size, method, version or encryption flag."""
  local, central = [], []
  offset = 0
  for m in members:
    name = m['name'].encode()
    payload = m['payload']
    size = m.get('size', len(payload))
    crc = m.get('crc', zlib.crc32(payload) if m.get('method', 0) == 0 else 0)
    fields = (m.get('version', 20), m.get('flags', 0), m.get('method', 0), 0, 0x21, crc, len(payload), size)
    header = struct.pack('<4s2B4HL2L2H', b'PK\x03\x04', fields[0], 0, *fields[1:], len(name), 0) + name
    central.append(struct.pack('<4s4B4HL2L5H2L', b'PK\x01\x02', 20, 3, fields[0], 0, *fields[1:], len(name), 0, 0, 0,
                               0, 0, offset) + name)
    local.append(header + payload)
    offset += len(header) + len(payload)
  directory = b''.join(central)
  end = struct.pack('<4s4H2LH', b'PK\x05\x06', 0, 0, len(members), len(members), len(directory), offset, 0)
  return b''.join(local) + directory + end


def deflated_zeros(n: int) -> tuple[bytes, int]:
  """(raw deflate stream, crc32) of n zero bytes (n a multiple of 1 MiB): about 1 KB per MiB, without compressing
  n bytes here (after a full flush each MiB compresses to the same bytes)."""
  mib = 1 << 20
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  segment = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)
  crc = 0
  for _ in range(n // mib):
    crc = zlib.crc32(bytes(mib), crc)
  return segment * (n // mib) + c.flush(zlib.Z_FINISH), crc


def torch_pickle_bytes(tensors, legacy=False) -> bytes:
  """data.pkl of a state dict {name: (storage key, storage numel, offset, size, stride)}, pickled by torch's names."""
  with torch_names() as (float_storage, rebuild):

    class Record:
      def __init__(self, key, numel, offset, size, stride):
        self.storage, self.args = ('storage', key, numel), (offset, size, stride)

      def __reduce__(self):
        return rebuild, (self.storage, *self.args, False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
      def persistent_id(self, obj):
        if isinstance(obj, tuple) and len(obj) == 3 and obj[0] == 'storage':
          return ('storage', float_storage, obj[1], 'cpu', obj[2]) + ((None,) if legacy else ())
        return None

    f = io.BytesIO()
    Pickler(f, protocol=2).dump(collections.OrderedDict((k, Record(*v)) for k, v in tensors.items()))
    return f.getvalue()


def torch_zip(tensors, storages) -> bytes:
  """A torch.save zip: data.pkl of `tensors` and members data/<key> (zip_archive members: payload, method, ...)."""
  members = [dict(name='m/data.pkl', payload=torch_pickle_bytes(tensors)), dict(name='m/byteorder', payload=b'little')]
  return zip_archive(members + [dict(m, name=f'm/data/{key}') for key, m in storages.items()])


def npy_header(dtype, shape) -> bytes:
  f = io.BytesIO()
  np.lib.format.write_array_header_1_0(f, {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                           'fortran_order': False, 'shape': tuple(shape)})
  return f.getvalue()


def vgg16_state(conv1_1=(2, 3, 1, 1)) -> dict[str, np.ndarray]:
  """A torchvision VGG-16 state dict of every name, with tensors of a few elements (shapes are checked later)."""
  rng = np.random.default_rng(0)
  state = {}
  for key in [f'features.{i}' for i in importer.TORCHVISION_VGG16] + ['classifier.0', 'classifier.3']:
    shape = conv1_1 if key == 'features.0' else (2, 2, 1, 1) if key.startswith('features') else (2, 2)
    state[f'{key}.weight'] = rng.normal(size=shape).astype(np.float32)
    state[f'{key}.bias'] = rng.normal(size=2).astype(np.float32)
  return state


def legacy_pth(body: bytes) -> bytes:
  """The legacy torch.save stream's three header pickles, then `body`."""
  return b''.join(pickle.dumps(h, protocol=2) for h in (torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL,
                                                        {'little_endian': True})) + body


def hostile_files(folder) -> dict[str, tuple[str, str]]:
  """{case: (path, a word the one-line error must hold)}: files of bytes to kilobytes that declare gigabytes."""
  out = {}

  def write(name, data, expected):
    path = os.path.join(folder, name)
    with open(path, 'wb') as f:
      f.write(data)
    out[name] = (path, expected)

  # one float, viewed with stride 0 as 1100 x 1000 x 1000 of them: 4.4 GB
  write('stride0.pth', torch_zip({'features.0.weight': ('0', 1, 0, (1100, 1000, 1000), (0, 0, 0))},
                                 {'0': dict(payload=b'\0' * 4)}), 'holds')
  # 6,000 distinct views of one 512 KiB storage: 3 GB from a 0.9 MB file
  views = {f'w{i}': ('0', 1 << 17, i, ((1 << 17) - i,), (1,)) for i in range(6000)}
  write('views.pth', torch_zip(views, {'0': dict(payload=bytes(1 << 19))}), 'holds')
  # a deflated storage of zeros: 1 MB that inflates to 1 GiB, and declares as much in the pickle
  zeros, crc = deflated_zeros(GIB)
  write('deflate_bomb.pth', torch_zip({'features.0.weight': ('0', GIB // 4, 0, (GIB // 4,), (1,))},
                                      {'0': dict(payload=zeros, method=8, size=GIB, crc=crc)}), 'inflate')
  # the pickle itself deflated: 1 GiB of zeros (never a pickle; the size is refused before)
  write('pickle_bomb.pth', zip_archive([dict(name='m/data.pkl', payload=zeros, method=8, size=GIB, crc=crc)]),
        'inflate')
  # a storage whose member holds fewer bytes than the pickle declares elements
  write('short_storage.pth', torch_zip({'features.0.weight': ('0', GIB, 0, (GIB,), (1,))},
                                       {'0': dict(payload=b'\0' * 64)}), 'declares')
  # an .npz member of 1 GiB zeros (268M float32)
  header = npy_header('<f4', (GIB // 4,))
  write('npz_bomb.npz', zip_archive([dict(name='features.0.weight.npy', payload=zeros, method=8,
                                          size=GIB + len(header), crc=crc)]), 'inflate')
  # an .npz that declares a 4 TiB array in 284 bytes
  write('npz_shape.npz', zip_archive([dict(name='features.0.weight.npy',
                                           payload=npy_header('<f4', (1 << 20, 1 << 20)) + bytes(16))]), 'declares')
  # 9 bytes of legacy pickle: PROTO 2, NONE, LONG_BINPUT 2**26 (memo of 2**27 pointers: 1 GiB), STOP
  write('memo.pth', b'\x80\x02N' + b'r' + struct.pack('<I', 1 << 26) + b'.', 'memo')
  # the same inside a legacy stream's state dict pickle, after the three header pickles
  write('memo_body.pth', legacy_pth(b'\x80\x02}q\x00' + b'r' + struct.pack('<I', 1 << 27) + b'.'), 'memo')
  # BINBYTES8 of 1 GiB declared, 4 bytes present: an unpickler allocates the declared length before reading
  write('bytes8.pth', legacy_pth(b'\x80\x04\x8e' + struct.pack('<Q', GIB) + b'abcd.'), 'remain')
  return out


# ------------------------------------------------------------------ bounded memory

# Run in a child whose address space is capped a few hundred MB above its baseline (after importing the readers):
# every case must end in the one-line error, not in a MemoryError (caught or not) or a kill.
CHILD = r'''
import json, resource, sys
from dilated_jax.weights import importer
cases = json.loads(sys.argv[1])
with open('/proc/self/status') as f:
  vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize:'))
headroom = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
results = {}
for name, path in cases.items():
  try:
    importer.read_layers(path, (104.0, 117.0, 123.0))
    results[name] = ['no error', '', False]
  except BaseException as e:
    chain, memory = e, False
    while chain is not None:
      memory |= isinstance(chain, MemoryError)
      chain = chain.__context__
    results[name] = [type(e).__name__, str(e), memory]
print(json.dumps(results))
'''


@pytest.mark.skipif(not os.path.exists('/proc/self/status'), reason='reads VmSize from /proc')
def test_tiny_files_that_declare_gigabytes_are_refused_in_bounded_memory(tmp_path):
  files = hostile_files(str(tmp_path))
  assert max(os.path.getsize(p) for p, _ in files.values()) < 1.5e6
  headroom = 384 << 20
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-c', CHILD, json.dumps({k: p for k, (p, _) in files.items()}), str(headroom)],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads(r.stdout.strip().splitlines()[-1])
  wrong = {}
  for name, (path, expected) in files.items():
    kind, message, memory = results[name]
    if kind != 'InputError' or memory or '\n' in message or path not in message or expected not in message:
      wrong[name] = (kind, message[:300], 'MemoryError on the way' if memory else '')
  assert not wrong, wrong


# ------------------------------------------------------------------ broken zips: one line, never a traceback


def npz_member(array=np.ones((2, 3, 3, 3), np.float32)) -> bytes:
  return npy_header(array.dtype, array.shape) + array.tobytes()


def broken_zips():
  """{case: bytes} of zips that zipfile opens but the readers must refuse: most escaped as a traceback before
  (zlib.error, NotImplementedError, RuntimeError, MemoryError) or named no file."""
  good = npz_member()
  garbage = b'\xff' * 40
  cases = {}
  for kind, name, payload in (('npz', 'features.0.weight.npy', good), ('pth', 'm/data.pkl', pickle.dumps({}))):
    cases[f'{kind} corrupt deflate'] = zip_archive([dict(name=name, payload=garbage, method=8, size=len(payload))])
    cases[f'{kind} method 99'] = zip_archive([dict(name=name, payload=payload, method=99)])
    cases[f'{kind} version 9.9'] = zip_archive([dict(name=name, payload=payload, version=99)])
    cases[f'{kind} encrypted'] = zip_archive([dict(name=name, payload=payload, flags=1)])
    cases[f'{kind} corrupt bzip2'] = zip_archive([dict(name=name, payload=garbage, method=12, size=len(payload))])
    cases[f'{kind} corrupt lzma'] = zip_archive([dict(name=name, payload=garbage, method=14, size=len(payload))])
    cases[f'{kind} wrong crc'] = zip_archive([dict(name=name, payload=payload, crc=1)])
  for dtype, values in (('string', np.array(['a', 'bc'])), ('object', np.array([1, None]))):
    f = io.BytesIO()
    np.savez(f, **dict(vgg16_state(), **{'features.0.bias': values}))  # otherwise a whole VGG-16
    cases[f'npz {dtype} dtype'] = f.getvalue()
  cases['npz 4 TiB shape'] = zip_archive([dict(name='features.0.weight.npy',
                                               payload=npy_header('<f4', (1 << 40,)) + bytes(4))])
  cases['npz no header'] = zip_archive([dict(name='features.0.weight.npy', payload=b'\x93NUMPY')])
  return cases


@pytest.mark.parametrize('case', sorted(broken_zips()))
def test_a_broken_zip_is_one_line_naming_the_file(case, tmp_path):
  path = tmp_path / ('w.npz' if case.startswith('npz') else 'w.pth')
  path.write_bytes(broken_zips()[case])
  with pytest.raises(InputError) as error:
    weights.read_layers(str(path), MEAN)
  message = str(error.value)
  assert str(path) in message and '\n' not in message, message


@pytest.mark.parametrize('save', [np.savez, np.savez_compressed])
def test_the_npz_reader_reads_what_numpy_writes(save, tmp_path):
  """Every numeric dtype, either byte order, Fortran order, 0-d and empty arrays, as np.load reads them."""
  rng = np.random.default_rng(1)
  arrays = {'f4': rng.normal(size=(3, 4)).astype(np.float32), 'f2': rng.normal(size=5).astype(np.float16),
            'big': rng.normal(size=(2, 3)).astype('>f8'), 'i8': np.arange(-3, 3), 'u1': np.arange(7, dtype=np.uint8),
            'bool': np.array([True, False]), 'fortran': np.asfortranarray(rng.normal(size=(2, 3, 4))),
            'scalar': np.float32(2.5), 'empty': np.zeros((0, 3), np.float32)}
  save(tmp_path / 'a.npz', **arrays)
  got = importer.read_npz(str(tmp_path / 'a.npz'))
  assert sorted(got) == sorted(arrays)
  for name, want in arrays.items():
    assert got[name].dtype == np.asarray(want).dtype and got[name].shape == np.shape(want), name
    np.testing.assert_array_equal(got[name], want)


# ------------------------------------------------------------------ fuzz: 1-5 bytes changed anywhere in a good file


def good_files(folder) -> dict[str, bytes]:
  """Small good files of every format the readers take, of conv1_1 alone: read to the end, a torch or npz file
  stops at the mapping ('no features.2.weight'), which is where a read succeeds here."""
  state = {k: v for k, v in vgg16_state().items() if k.startswith('features.0.')}
  for name, legacy in (('zip.pth', False), ('legacy.pth', True)):
    write_torch(os.path.join(folder, name), state, legacy=legacy)
  with zipfile.ZipFile(os.path.join(folder, 'deflated.pth'), 'w', zipfile.ZIP_DEFLATED) as z:
    with zipfile.ZipFile(os.path.join(folder, 'zip.pth')) as stored:
      for info in stored.infolist():
        z.writestr(info.filename, stored.read(info))
  np.savez(os.path.join(folder, 'stored.npz'), **state)
  np.savez_compressed(os.path.join(folder, 'compressed.npz'), **state)
  layers = [caffe.Layer('conv1_1', 'Convolution', [state['features.0.weight'], state['features.0.bias']])]
  caffe.write_caffemodel(os.path.join(folder, 'model.caffemodel'), layers)
  out = {}
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), 'rb') as f:
      out[name] = f.read()
  return out


def read(path):
  """weights.read_layers, as every entry point calls it; reaching the mapping of a torchvision file is success."""
  try:
    weights.read_layers(path, MEAN)
  except ValueError as e:
    if 'no features.2.weight' not in str(e):
      raise


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # pickletools on a string with a flipped escape
def test_byte_flips_anywhere_end_in_a_read_or_one_line(tmp_path):
  """6,000 variants (1 to 5 bytes set to random values, anywhere) of six formats: nothing escapes."""
  rng = np.random.default_rng(13)
  escaped, outcomes = [], collections.Counter()
  for name, data in good_files(str(tmp_path)).items():
    path = str(tmp_path / f'fuzz_{name}')
    with open(path, 'wb') as f:
      f.write(data)
    read(path)  # the intact file reads
    with open(path, 'r+b') as f:  # rewritten in place, never truncated: a truncation costs a millisecond here
      for _ in range(1000):
        flipped = bytearray(data)
        for at in rng.integers(0, len(data), rng.integers(1, 6)):
          flipped[at] = rng.integers(256)
        f.seek(0)
        f.write(flipped)
        f.flush()
        try:
          read(path)  # a variant may still be good: bytes of weights changed
          outcomes[name, 'read'] += 1
        except cli.USER_ERRORS as e:
          outcomes[name, 'one line'] += 1
          if '\n' in str(e) or path not in str(e):
            escaped.append(f'{name}: {type(e).__name__}: {e}')
        except Exception as e:  # noqa: BLE001 - what the test is for
          escaped.append(f'{name}: {type(e).__name__}: {str(e)[:200]}')
  assert not escaped, (len(escaped), escaped[:10])
  assert all(outcomes[name, 'one line'] > 500 for name, _ in outcomes), outcomes  # the flips do break files


# ------------------------------------------------------------------ linear time


def blob_file(body: bytes) -> bytes:
  """A .caffemodel of one layer with one blob of `body`."""
  blob = caffe._length_delimited(caffe.LAYER_BLOBS, body)
  return caffe._length_delimited(caffe.NET_LAYER, caffe._length_delimited(caffe.LAYER_NAME, b'conv1_1') + blob)


def test_a_crafted_caffemodel_parses_in_time_linear_in_its_size(tmp_path):
  """Alternating runs of one unpacked float and a varint (each run rescanned the rest of the blob: quadratic) take
  about as long as a file of the same size and field count whose 5-byte fields are not float data."""
  n = 40_000  # 280 kB
  crafted = blob_file(b''.join([b'\x2d\x00\x00\x80\x3f', b'\x50\x01'] * n))  # data; field 10, skipped
  plain = blob_file(b''.join([b'\x35\x00\x00\x80\x3f', b'\x50\x01'] * n))  # field 6 (diff), skipped
  assert len(crafted) == len(plain)
  times = {}
  for name, data in (('crafted', crafted), ('plain', plain)):
    path = tmp_path / f'{name}.caffemodel'
    path.write_bytes(data)
    best = math.inf
    for _ in range(3):
      start = time.perf_counter()
      with pytest.raises(InputError, match='holds'):  # a blob of shape () with n values: found at its end
        weights.read_layers(str(path), MEAN)
      best = min(best, time.perf_counter() - start)
    times[name] = best
  assert times['crafted'] < 4 * times['plain'], times


# ------------------------------------------------------------------ messages name the file


def test_wrong_blobs_and_tensors_are_named_with_the_file(tmp_path):
  # a Caffe blob whose shape's product wraps int64 to 0, with no data
  dims = caffe._length_delimited(caffe.SHAPE_DIM, caffe._encode_varint(1 << 32) * 2)
  path = tmp_path / 'wrap.caffemodel'
  path.write_bytes(blob_file(caffe._length_delimited(caffe.BLOB_SHAPE, dims)))
  with pytest.raises(InputError, match=r'wrap\.caffemodel.*4294967296, 4294967296'):
    weights.read_layers(str(path), MEAN)
  # a conv1_1 weight of shape (7,): named as the file has it, not after folding torchvision's input into it
  state = vgg16_state(conv1_1=(7,))
  cfg = model_config('camvid')
  cfg.front_end.width = 1 / 32
  for name in ('seven.npz', 'seven.pth'):
    path = tmp_path / name
    if name.endswith('npz'):
      np.savez(path, **state)
    else:
      write_torch(str(path), state)
    with pytest.raises(InputError) as error:
      weights.import_weights(str(path), cfg, MEAN, with_context=False)
    message = str(error.value)
    assert str(path) in message and 'features.0.weight' in message and 'shape 7 and' in message, message
    assert '1x3x1x7' not in message, message
