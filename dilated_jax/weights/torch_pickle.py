"""PyTorch state dicts (.pth / .pt) without torch and without running code from the file.

torch.save writes a zip (since torch 1.6: <archive>/data.pkl, a pickle whose tensors point through persistent ids
at raw storages <archive>/data/<key>) or, before that, the legacy stream: pickles of a magic number, the protocol
version, system info, the object and the storage keys, then each storage as an int64 element count and its raw
bytes (torchvision's 2017 VGG-16 download is one). A pickle can call any importable function, so it is read by an
Unpickler whose `find_class` knows only the few names a state dict uses, each mapped to a local function here;
any other name (os.system, builtins.exec, ...) stops the load before anything is called.

Memory stays in proportion to the file: what a file declares (a pickle's memo indices and lengths, a zip member's
size, a storage's element count, a tensor's size) is checked against what it holds before anything is allocated.
"""

import collections
import io
import math
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile
import zlib

import numpy as np

from dilated_jax import InputError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Zip members (of a .pth or an .npz) may inflate to at most MAX_INFLATION bytes per byte of the archive, all members
# together, plus INFLATION_SLACK: torch.save and np.savez store members, and weights deflate by a few percent, but
# deflated zeros grow 1000-fold (a 1 MB member that declares and holds 1 GiB).
MAX_INFLATION = 32
INFLATION_SLACK = 1 << 20
_READ_CHUNK = 1 << 24  # a member is read in pieces of this size into its array: no second copy of it
_STORED_OR_DEFLATED = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # bzip2 and lzma inflate without a bound per read
# What zipfile raises on a broken or unsupported archive: a corrupt stream (zlib.error, EOFError), an unknown method
# or version (NotImplementedError), an encrypted member (RuntimeError), a short read (OSError).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
              OSError, struct.error)
_MAX_DIMS = 64  # numpy's limit on an array's dimensions

# torch.<Name>Storage -> element type; None: bfloat16, which numpy has only through ml_dtypes.
_STORAGE_DTYPES = {'FloatStorage': '<f4', 'DoubleStorage': '<f8', 'HalfStorage': '<f2', 'BFloat16Storage': None,
                   'LongStorage': '<i8', 'IntStorage': '<i4', 'ShortStorage': '<i2', 'CharStorage': 'i1',
                   'ByteStorage': 'u1', 'BoolStorage': '?'}


class _Record:
  """A value the unpickler builds here; BUILD (setting attributes from the file) is refused, as a state dict has
  none: the checks of the constructor must hold until the value is used."""

  __slots__ = ()

  def __setstate__(self, state):
    raise pickle.UnpicklingError(f'it sets the state of a {type(self).__name__} (BUILD), which a state dict never does')


class StorageType(_Record):
  """Stands in for torch.FloatStorage and the like: only the element type matters."""

  __slots__ = ('dtype',)

  def __init__(self, name: str):
    if _STORAGE_DTYPES[name] is None:
      import ml_dtypes  # installed with jax
      self.dtype = np.dtype(ml_dtypes.bfloat16)
    else:
      self.dtype = np.dtype(_STORAGE_DTYPES[name])


class Storage(_Record):
  """One storage's elements; filled when its bytes are read (after the pickle, in the legacy format). `root` is the
  storage whose bytes these are (a legacy view's root, else itself)."""

  __slots__ = ('dtype', 'array', 'root')

  def __init__(self, dtype, root=None):
    self.dtype, self.array, self.root = dtype, None, self if root is None else root


def _ints(values, what: str) -> tuple[int, ...]:
  if not isinstance(values, (tuple, list)) or len(values) > _MAX_DIMS or not all(type(v) is int for v in values):
    raise pickle.UnpicklingError(f'a tensor whose {what} is not a tuple of at most {_MAX_DIMS} integers')
  return tuple(values)


class Tensor(_Record):
  """A strided view of a storage, recorded while unpickling and made an array once every storage is read."""

  __slots__ = ('storage', 'offset', 'size', 'stride')

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, Storage):
      raise pickle.UnpicklingError('a tensor whose storage is not a storage record')
    self.storage, self.offset = storage, _ints((offset,), 'offset')[0]
    self.size, self.stride = _ints(size, 'size'), _ints(stride, 'stride')
    if len(self.size) != len(self.stride) or min(self.size + self.stride + (self.offset,)) < 0:
      raise pickle.UnpicklingError(f'a tensor of size {self.size}, stride {self.stride} and offset {self.offset}')

  @property
  def numel(self) -> int:
    return math.prod(self.size)

  def array(self) -> np.ndarray:
    data, size, stride, offset = self.storage.array, self.size, self.stride, self.offset
    if self.numel == 0:
      return np.zeros(size, data.dtype)
    # Never read outside the storage, nor make more elements than it has (stride 0 repeats one element at no cost
    # in the file: 4 GB from 4 bytes), whatever the file claims.
    if self.numel > data.size:
      raise pickle.UnpicklingError(f'a tensor of size {size} ({self.numel} elements) from a storage of {data.size} '
                                   'elements')
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
      raise pickle.UnpicklingError(f'a tensor of size {size} runs past the end of its storage ({data.size} elements)')
    item = data.dtype.itemsize
    return np.array(np.lib.stride_tricks.as_strided(data[offset:], size, tuple(s * item for s in stride),
                                                    writeable=False))


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """torch._utils._rebuild_tensor and _rebuild_tensor_v2 (requires_grad, hooks and metadata are not needed)."""
  return Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
  """torch._utils._rebuild_parameter: an nn.Parameter is its tensor here."""
  return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}


class SafeUnpickler(pickle.Unpickler):
  """Builds dicts, lists, numbers, strings and tensor records only; refuses every other global by name."""

  def __init__(self, file, storage=None):
    super().__init__(file, encoding='utf-8')
    self._storage = storage

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == 'torch' and name in _STORAGE_DTYPES:
      return StorageType(name)
    raise pickle.UnpicklingError(f'it asks for {module}.{name}, which a weights file never needs: refused, '
                                 'nothing from the file was run')

  def persistent_load(self, pid):
    if self._storage is None or not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ('storage', b'storage')
                                     and isinstance(pid[1], StorageType)):
      raise pickle.UnpicklingError(f'an unknown persistent record {reprlib.repr(pid)}')
    return self._storage(pid)


def _prescan(data: bytes, start: int):
  """Checks the pickle at data[start:] for what the unpickler would allocate on its word alone: every length within
  the data (pickletools reads each argument), and memo indices below the number of values it memoizes (the
  unpickler grows its memo to twice the largest index: 8 bytes a slot, 1 GiB for index 2**26 in a 9-byte pickle)."""
  f = io.BytesIO(data)
  f.seek(start)
  stored, largest = 0, -1
  try:
    for op, arg, _ in pickletools.genops(f):
      if op.name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
        stored, largest = stored + 1, max(largest, arg)
      elif op.name == 'MEMOIZE':
        stored += 1
  except (ValueError, struct.error) as e:  # an unknown opcode, an argument longer than the data, no STOP
    raise pickle.UnpicklingError(f'a broken pickle at byte {f.tell()}: {e}') from None
  if largest >= stored:
    raise pickle.UnpicklingError(f'a pickle that puts memo index {largest} but memoizes {stored} values')


def _load(data: bytes, f: io.BytesIO, storage=None):
  """The next pickle of f, a BytesIO of `data` (where a read past the end allocates nothing), checked first."""
  _prescan(data, f.tell())
  return SafeUnpickler(f, storage).load()


def _key(key) -> str:
  if isinstance(key, bytes):
    return key.decode()
  if isinstance(key, (str, int)):
    return str(key)
  raise pickle.UnpicklingError(f'a storage key of type {type(key).__name__}')


class ZipMembers:
  """Reads members of a zip archive, each only after checking its declared size against what the archive can
  hold (MAX_INFLATION); a member's array is allocated once and filled piece by piece."""

  def __init__(self, archive: zipfile.ZipFile, archive_bytes: int):
    self.archive, self.allowed = archive, MAX_INFLATION * archive_bytes + INFLATION_SLACK
    self.archive_bytes, self.inflated = archive_bytes, 0

  def open(self, info: zipfile.ZipInfo):
    if info.flag_bits & 1:
      raise InputError(f'{info.filename} is encrypted')
    if info.compress_type not in _STORED_OR_DEFLATED:
      raise InputError(f'{info.filename} is compressed by method {info.compress_type}; only stored and deflated '
                       'members are read')
    self.inflated += info.file_size
    if self.inflated > self.allowed:
      raise InputError(f'{info.filename} would inflate the archive\'s {self.archive_bytes} bytes to {self.inflated}, '
                       f'more than {MAX_INFLATION} times as many (a deflate bomb?)')
    return self.archive.open(info)

  @staticmethod
  def fill(stream, info: zipfile.ZipInfo, out: np.ndarray):
    """Reads the rest of the member into `out` (uint8): exactly as many bytes as it has room for."""
    at = 0
    while at < out.size:
      piece = stream.read(min(_READ_CHUNK, out.size - at))
      if not piece:
        raise InputError(f'{info.filename} ends after {at} of its {info.file_size} bytes')
      out[at:at + len(piece)] = np.frombuffer(piece, np.uint8)
      at += len(piece)

  def read(self, info: zipfile.ZipInfo) -> np.ndarray:
    """The member's bytes, as a uint8 array."""
    with self.open(info) as stream:
      out = np.empty(info.file_size, np.uint8)
      self.fill(stream, info, out)  # zipfile stops at the declared size, and checks the CRC there
    return out


def _read_zip(archive: zipfile.ZipFile, archive_bytes: int):
  infos = {info.filename: info for info in archive.infolist()}
  members = ZipMembers(archive, archive_bytes)
  pkl = sorted(n for n in infos if n == 'data.pkl' or n.endswith('/data.pkl'))
  if len(pkl) != 1:
    raise InputError(f'a zip archive, but not one torch.save wrote (expected one data.pkl, found {len(pkl)})')
  prefix = pkl[0][:-len('data.pkl')]
  order = infos.get(prefix + 'byteorder')
  big_endian = order is not None and members.read(order).tobytes().strip() == b'big'
  storages = {}

  def storage(pid):  # ('storage', type, key, location, numel)
    key, dtype, numel = _key(pid[2]), pid[1].dtype, pid[4]
    if key not in storages:
      info = infos.get(f'{prefix}data/{key}')
      if info is None:
        raise pickle.UnpicklingError(f'tensor data {prefix}data/{key} is missing from the archive')
      if type(numel) is not int or numel * dtype.itemsize != info.file_size:  # before reading: its own word
        raise pickle.UnpicklingError(f'storage {key} declares {reprlib.repr(numel)} elements of {dtype.itemsize} '
                                     f'bytes, its member {info.filename} holds {info.file_size} bytes')
      s = storages[key] = Storage(dtype)
      raw = members.read(info)
      s.array = raw.view(dtype.newbyteorder('>')).astype(dtype) if big_endian else raw.view(dtype)
    return storages[key]

  data = members.read(infos[pkl[0]]).tobytes()
  return _load(data, io.BytesIO(data), storage)


def _read_legacy(data: bytes):
  f = io.BytesIO(data)
  if _load(data, f) != LEGACY_MAGIC:
    raise InputError('neither a zip archive nor the legacy torch.save stream')
  if _load(data, f) != LEGACY_PROTOCOL:
    raise InputError('a legacy torch.save stream of an unknown protocol version')
  _load(data, f)  # system info
  roots, views = {}, []

  def storage(pid):  # ('storage', type, root key, location, numel, view metadata: (key, offset, numel))
    root = roots.setdefault(_key(pid[2]), Storage(pid[1].dtype))
    view = pid[5] if len(pid) > 5 else None
    if view is None:
      return root
    if not isinstance(view, tuple) or len(view) < 3:
      raise pickle.UnpicklingError(f'a storage view {reprlib.repr(view)}')
    offset, n = _ints(view[1:3], 'storage view')
    views.append((root, Storage(root.dtype, root), offset, n))
    return views[-1][1]

  obj = _load(data, f, storage)
  keys = _load(data, f)
  if not isinstance(keys, (list, tuple)):
    raise InputError(f'a list of storage keys expected after the state dict, found a {type(keys).__name__}')
  for key in keys:
    key = _key(key)
    if key not in roots:
      raise InputError(f'storage {key} is listed but no tensor uses it')
    root, at = roots[key], f.tell()
    if at + 8 > len(data):
      raise InputError(f'truncated: the file ends at byte {len(data)}, inside the header of storage {key}')
    nbytes = struct.unpack_from('<q', data, at)[0] * root.dtype.itemsize
    left = len(data) - at - 8
    if not 0 <= nbytes <= left:  # checked before reading: a corrupt size must not allocate terabytes
      raise InputError(f'truncated: storage {key} at byte {at} needs {nbytes} bytes, the file has {left} more')
    root.array = np.frombuffer(data, root.dtype, count=nbytes // root.dtype.itemsize, offset=at + 8)
    f.seek(at + 8 + nbytes)
  for root, view, offset, n in views:
    view.array = None if root.array is None else root.array[offset:offset + n]
  return obj


def _state_dict(obj):
  """The name -> array items of a loaded state dict, or of a {'state_dict': ...} / {'model': ...} wrapper."""
  if isinstance(obj, dict):
    for wrapper in ('state_dict', 'model'):
      if isinstance(obj.get(wrapper), dict):
        obj = obj[wrapper]
        break
  if not isinstance(obj, dict):
    raise InputError(f'not a state dict but a {type(obj).__name__}')
  tensors = {name: value for name, value in obj.items() if isinstance(value, Tensor)}
  for name, value in tensors.items():
    if not isinstance(name, str):
      raise InputError(f'a tensor named by a {type(name).__name__}, not a string')
    if value.storage.array is None:
      raise InputError(f'truncated: the data of {name} is missing')
  # Distinct views of one storage may not add up to more than the file's storages hold: 6,000 views of 512 KiB
  # would be 3 GB from a 1 MB file. The same view under two names (tied weights) is one array.
  holds = sum(root.array.nbytes for root in {id(t.storage.root): t.storage.root for t in tensors.values()}.values())
  made, arrays, out = 0, {}, {}
  for name, value in tensors.items():
    view = (id(value.storage), value.offset, value.size, value.stride)
    if view not in arrays:
      made += value.numel * value.storage.dtype.itemsize
      if made > holds:
        raise InputError(f'its tensors up to {name} take {made} bytes, more than the file holds in storages '
                         f'({holds} bytes)')
      array = value.array()
      arrays[view] = array.astype(np.float32) if array.dtype.name == 'bfloat16' else array
    out[name] = arrays[view]
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> array of a torch.save'd state dict; a refused or broken file raises ValueError in one line."""
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        obj = _read_zip(archive, os.path.getsize(path))
    else:
      with open(path, 'rb') as f:
        obj = _read_legacy(f.read())
    return _state_dict(obj)
  except (pickle.UnpicklingError, ValueError, IndexError, TypeError, KeyError, AttributeError, OverflowError,
          MemoryError) + ZIP_ERRORS as e:
    message = ' '.join(str(e).split()) or type(e).__name__
    raise InputError(f'{path}: not loaded as a torch state dict: {message}') from None
