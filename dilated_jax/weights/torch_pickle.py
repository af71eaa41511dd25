"""PyTorch state dicts (.pth / .pt) without torch and without running code from the file.

torch.save writes a zip (since torch 1.6: <archive>/data.pkl, a pickle whose tensors point through persistent ids
at raw storages <archive>/data/<key>) or, before that, the legacy stream: pickles of a magic number, the protocol
version, system info, the object and the storage keys, then each storage as an int64 element count and its raw
bytes (torchvision's 2017 VGG-16 download is one). A pickle can call any importable function, so it is read by an
Unpickler whose `find_class` knows only the few names a state dict uses, each mapped to a local function here;
any other name (os.system, builtins.exec, ...) stops the load before anything is called.
"""

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> element type; None: bfloat16, which numpy has only through ml_dtypes.
_STORAGE_DTYPES = {'FloatStorage': '<f4', 'DoubleStorage': '<f8', 'HalfStorage': '<f2', 'BFloat16Storage': None,
                   'LongStorage': '<i8', 'IntStorage': '<i4', 'ShortStorage': '<i2', 'CharStorage': 'i1',
                   'ByteStorage': 'u1', 'BoolStorage': '?'}


class StorageType:
  """Stands in for torch.FloatStorage and the like: only the element type matters."""

  def __init__(self, name: str):
    if _STORAGE_DTYPES[name] is None:
      import ml_dtypes  # installed with jax
      self.dtype = np.dtype(ml_dtypes.bfloat16)
    else:
      self.dtype = np.dtype(_STORAGE_DTYPES[name])


class Storage:
  """One storage's elements; filled when its bytes are read (after the pickle, in the legacy format)."""

  def __init__(self, dtype):
    self.dtype, self.array = dtype, None


class Tensor:
  """A strided view of a storage, recorded while unpickling and made an array once every storage is read."""

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, Storage):
      raise pickle.UnpicklingError('a tensor whose storage is not a storage record')
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

  def array(self) -> np.ndarray:
    data = self.storage.array
    size, stride, offset = self.size, self.stride, self.offset
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
      raise pickle.UnpicklingError(f'a tensor of size {size}, stride {stride} and offset {offset}')
    if 0 in size:
      return np.zeros(size, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:  # never read outside the storage, whatever the file claims
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
      raise pickle.UnpicklingError(f'an unknown persistent record {str(pid)[:80]}')
    return self._storage(pid)


def _key(key) -> str:
  return key.decode() if isinstance(key, bytes) else str(key)


def _read_zip(archive: zipfile.ZipFile):
  names = set(archive.namelist())
  pkl = sorted(n for n in names if n == 'data.pkl' or n.endswith('/data.pkl'))
  if len(pkl) != 1:
    raise ValueError(f'a zip archive, but not one torch.save wrote (expected one data.pkl, found {len(pkl)})')
  prefix = pkl[0][:-len('data.pkl')]
  big_endian = prefix + 'byteorder' in names and archive.read(prefix + 'byteorder').strip() == b'big'
  storages = {}

  def storage(pid):  # ('storage', type, key, location, numel)
    key = _key(pid[2])
    if key not in storages:
      member = f'{prefix}data/{key}'
      if member not in names:
        raise pickle.UnpicklingError(f'tensor data {member} is missing from the archive')
      s = storages[key] = Storage(pid[1].dtype)
      data = archive.read(member)
      dtype = s.dtype.newbyteorder('>') if big_endian else s.dtype
      s.array = np.frombuffer(data, dtype, count=len(data) // dtype.itemsize).astype(s.dtype)
    return storages[key]

  return SafeUnpickler(io.BytesIO(archive.read(pkl[0])), storage).load()


def _read_legacy(f):
  if SafeUnpickler(f).load() != LEGACY_MAGIC:
    raise ValueError('neither a zip archive nor the legacy torch.save stream')
  if SafeUnpickler(f).load() != LEGACY_PROTOCOL:
    raise ValueError('a legacy torch.save stream of an unknown protocol version')
  SafeUnpickler(f).load()  # system info
  roots, views = {}, []

  def storage(pid):  # ('storage', type, root key, location, numel, view metadata)
    root = roots.setdefault(_key(pid[2]), Storage(pid[1].dtype))
    view = pid[5] if len(pid) > 5 else None
    if view is None:
      return root
    views.append((root, Storage(root.dtype), int(view[1]), int(view[2])))
    return views[-1][1]

  obj = SafeUnpickler(f, storage).load()
  for key in SafeUnpickler(f).load():
    if _key(key) not in roots:
      raise ValueError(f'storage {key} is listed but no tensor uses it')
    root, at = roots[_key(key)], f.tell()
    header = f.read(8)
    if len(header) != 8:
      raise ValueError(f'truncated: the file ends at byte {at + len(header)}, inside the header of storage {key}')
    nbytes = struct.unpack('<q', header)[0] * root.dtype.itemsize
    left = os.fstat(f.fileno()).st_size - f.tell()
    if not 0 <= nbytes <= left:  # checked before reading: a corrupt size must not allocate terabytes
      raise ValueError(f'truncated: storage {key} at byte {at} needs {nbytes} bytes, the file has {left} more')
    data = f.read(nbytes)
    if nbytes < 0 or len(data) != nbytes:
      raise ValueError(f'truncated: storage {key} at byte {at} needs {nbytes} bytes, the file has {len(data)} more')
    root.array = np.frombuffer(data, root.dtype)
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
    raise ValueError(f'not a state dict but a {type(obj).__name__}')
  out = {}
  for name, value in obj.items():
    if isinstance(value, Tensor):
      if value.storage.array is None:
        raise ValueError(f'truncated: the data of {name} is missing')
      array = value.array()
      out[str(name)] = array.astype(np.float32) if array.dtype.name == 'bfloat16' else array
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> array of a torch.save'd state dict; a refused or broken file raises ValueError in one line."""
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        obj = _read_zip(archive)
    else:
      with open(path, 'rb') as f:
        obj = _read_legacy(f)
    return _state_dict(obj)
  except (pickle.UnpicklingError, ValueError, EOFError, zipfile.BadZipFile, struct.error, IndexError, TypeError,
          KeyError, AttributeError, OverflowError, MemoryError) as e:
    raise ValueError(f'{path}: not loaded as a torch state dict: {e}') from None
