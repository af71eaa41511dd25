"""Caffe .caffemodel files without Caffe: a protobuf wire-format reader (and writer) for layer names and weight blobs.

A .caffemodel is a serialised `NetParameter`. Only the fields that hold weights are decoded; every other field is
skipped by its length. Field numbers are those of BVLC/caffe src/caffe/proto/caffe.proto:

  NetParameter      layer = 100 (LayerParameter, 2015 on)     layers = 2 (V1LayerParameter, 2014 models such as
                                                                          VGG_ILSVRC_16_layers.caffemodel)
  LayerParameter    name = 1, type = 2 (string), blobs = 7
  V1LayerParameter  name = 4, type = 5 (enum), blobs = 6, layer = 1 (V0LayerParameter: name = 1, type = 2, blobs = 50)
  BlobProto         num = 1, channels = 2, height = 3, width = 4 (legacy 4-D shape), data = 5 (float, packed),
                    shape = 7 (BlobShape: dim = 1, int64, packed), double_data = 8 (packed)
"""

import dataclasses
import math

import numpy as np

from dilated_jax import InputError

NET_LAYER, NET_LAYERS_V1 = 100, 2
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7
V1_NAME, V1_TYPE, V1_BLOBS, V1_V0_LAYER = 4, 5, 6, 1
V0_NAME, V0_TYPE, V0_BLOBS = 1, 2, 50
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8
SHAPE_DIM = 1

# V1LayerParameter.LayerType values of the layers a segmentation or VGG net holds (the rest print as 'V1 type n').
V1_TYPES = {1: 'Accuracy', 3: 'Concat', 4: 'Convolution', 5: 'Data', 6: 'Dropout', 12: 'ImageData',
            14: 'InnerProduct', 15: 'LRN', 17: 'Pooling', 18: 'ReLU', 20: 'Softmax', 21: 'SoftmaxWithLoss',
            22: 'Split', 29: 'MemoryData', 39: 'Deconvolution'}

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
_UNPACKED_FLOAT_TAG = BLOB_DATA << 3 | FIXED32  # 0x2d
MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes


@dataclasses.dataclass
class Layer:
  """One layer of a Caffe net: its name, type and weight blobs (float32, in Caffe's shape, e.g. OIHW)."""

  name: str
  type: str
  blobs: list[np.ndarray]


class DecodeError(InputError):
  """The bytes are not a complete NetParameter; `offset` is where decoding failed."""

  def __init__(self, offset: int, message: str):
    super().__init__(f'at byte {offset}: {message}')
    self.offset = offset


# ------------------------------------------------------------------ reading


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
  result = shift = 0
  start = pos
  while True:
    if pos >= end:
      raise DecodeError(start, 'a varint runs past the end of its message')
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if b < 0x80:
      return result, pos
    shift += 7
    if shift >= 70:
      raise DecodeError(start, 'a varint longer than 10 bytes')


def _field(buf, pos: int, end: int):
  """(field number, wire type, value, tag offset, next position); value is an int, or (start, end) of the payload."""
  tag_at = pos
  key, pos = _varint(buf, pos, end)
  field, wire = key >> 3, key & 7
  if field == 0:
    raise DecodeError(tag_at, 'field number 0 (not protobuf data)')
  if wire == VARINT:
    value, pos = _varint(buf, pos, end)
    return field, wire, value, tag_at, pos
  if wire not in (FIXED64, FIXED32, LENGTH):  # 3, 4: groups, which caffe.proto never uses; 6, 7: invalid
    raise DecodeError(tag_at, f'wire type {wire} (not a Caffe NetParameter)')
  if wire == LENGTH:
    n, pos = _varint(buf, pos, end)
  else:
    n = 8 if wire == FIXED64 else 4
  if pos + n > end:
    raise DecodeError(tag_at, f'field {field} needs {n} bytes from byte {pos}, but its message ends at byte {end}')
  return field, wire, (pos, pos + n), tag_at, pos + n


def _fields(buf, pos: int, end: int):
  """Yields (field number, wire type, value, tag offset) of every field in buf[pos:end]."""
  while pos < end:
    *out, pos = _field(buf, pos, end)
    yield tuple(out)


def _string(buf, span, at: int) -> str:
  try:
    return bytes(buf[span[0]:span[1]]).decode('utf-8')
  except UnicodeDecodeError:
    raise DecodeError(at, 'a layer name or type that is not UTF-8') from None


def _signed(v: int) -> int:  # int64 varints are two's complement in 64 bits
  return v - (1 << 64) if v >= 1 << 63 else v


class _Values:
  """A blob's float or double data from any number of fields: one field's bytes are used where they lie, several are
  gathered into one buffer (not an array per field: a 6-byte field would cost 100 bytes)."""

  def __init__(self, buf, dtype: str):
    self.buf, self.dtype, self.span, self.gathered = buf, np.dtype(dtype), None, None

  def add(self, start: int, end: int, at: int):
    if (end - start) % self.dtype.itemsize:
      raise DecodeError(at, f'packed {self.dtype.name} data of {end - start} bytes')
    if start == end:
      return
    if self.span is None and self.gathered is None:
      self.span = (start, end)
    else:
      self.add_bytes(memoryview(self.buf)[start:end])

  def add_bytes(self, data):
    if self.gathered is None:
      self.gathered = bytearray() if self.span is None else bytearray(memoryview(self.buf)[slice(*self.span)])
      self.span = None
    self.gathered += data

  def array(self) -> np.ndarray | None:
    if self.span is not None:
      return np.frombuffer(self.buf, self.dtype, count=(self.span[1] - self.span[0]) // self.dtype.itemsize,
                           offset=self.span[0])
    return None if self.gathered is None else np.frombuffer(self.gathered, self.dtype)


def _float_records(buf, pos: int, end: int) -> int:
  """How many 5-byte unpacked float records (tag 0x2d, then 4 bytes) follow at pos. A short run is counted byte by
  byte, a long one in windows that double: the cost is in proportion to the run, never to the rest of the blob
  (rescanning the rest per run made alternating floats and varints quadratic: 1 MB took 18 s)."""
  n, most = 0, (end - pos) // 5
  while n < min(8, most) and buf[pos + 5 * n] == _UNPACKED_FLOAT_TAG:
    n += 1
  if n < 8:
    return n
  window = 8
  while n < most:
    count = min(window, most - n)
    other = np.frombuffer(buf, np.uint8, count=5 * count, offset=pos + 5 * n)[::5] != _UNPACKED_FLOAT_TAG
    if other.any():
      return n + int(other.argmax())
    n += count
    window *= 2
  return n


def _blob(buf, start: int, end: int, at: int) -> np.ndarray:
  legacy, shape = {}, None
  floats, doubles = _Values(buf, '<f4'), _Values(buf, '<f8')
  pos = start
  while pos < end:
    if buf[pos] == _UNPACKED_FLOAT_TAG and pos + 5 <= end:
      # Unpacked repeated floats (allowed by protobuf, though Caffe packs): 5-byte records, read as one run.
      n = _float_records(buf, pos, end)
      if n < 8:  # a short run: slices cost less than arrays
        floats.add_bytes(b''.join(buf[p + 1:p + 5] for p in range(pos, pos + 5 * n, 5)))
      else:
        floats.add_bytes(np.frombuffer(buf, np.uint8, count=5 * n, offset=pos).reshape(n, 5)[:, 1:].tobytes())
      pos += 5 * n
      continue
    field, wire, value, tag_at, pos = _field(buf, pos, end)
    if field in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH) and wire == VARINT:
      legacy[field] = _signed(value)
    elif field == BLOB_DATA and wire == LENGTH:
      floats.add(*value, tag_at)
    elif field == BLOB_DOUBLE_DATA and wire in (LENGTH, FIXED64):
      doubles.add(*value, tag_at)
    elif field == BLOB_SHAPE and wire == LENGTH:
      shape = []
      for f, w, v, a in _fields(buf, value[0], value[1]):
        if f == SHAPE_DIM and w == VARINT:
          shape.append(_signed(v))
        elif f == SHAPE_DIM and w == LENGTH:  # packed
          p = v[0]
          while p < v[1] and len(shape) <= MAX_BLOB_AXES:
            d, p = _varint(buf, p, v[1])
            shape.append(_signed(d))
        if len(shape) > MAX_BLOB_AXES:
          raise DecodeError(a, f'a blob shape of more than {MAX_BLOB_AXES} axes')
  # Caffe's Blob::FromProto: the legacy num/channels/height/width when any is set, else `shape`.
  if legacy:
    shape = [legacy.get(f, 0) for f in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH)]
  shape = tuple(shape or ())
  values = floats.array()
  values = values if values is not None else doubles.array()
  values = values if values is not None else np.zeros(0, np.float32)
  if any(d < 0 for d in shape) or values.size != math.prod(shape):  # Python integers: a product never wraps
    raise DecodeError(at, f'a blob of shape {shape} holds {values.size} values')
  return values.astype(np.float32).reshape(shape)


def _layer(buf, start: int, end: int, at: int, v1: bool) -> Layer:
  name_f, type_f, blobs_f = (V1_NAME, V1_TYPE, V1_BLOBS) if v1 else (LAYER_NAME, LAYER_TYPE, LAYER_BLOBS)
  name, kind, blobs = '', '', []
  for field, wire, value, tag_at in _fields(buf, start, end):
    if field == name_f and wire == LENGTH:
      name = _string(buf, value, tag_at)
    elif field == type_f and wire == (VARINT if v1 else LENGTH):
      kind = V1_TYPES.get(value, f'V1 type {value}') if v1 else _string(buf, value, tag_at)
    elif field == blobs_f and wire == LENGTH:
      blobs.append(_blob(buf, value[0], value[1], tag_at))
    elif v1 and field == V1_V0_LAYER and wire == LENGTH:  # a V0 layer wrapped in a V1 one (2013 models)
      for f, w, v, a in _fields(buf, value[0], value[1]):
        if f == V0_NAME and w == LENGTH:
          name = _string(buf, v, a)
        elif f == V0_TYPE and w == LENGTH:
          kind = _string(buf, v, a)
        elif f == V0_BLOBS and w == LENGTH:
          blobs.append(_blob(buf, v[0], v[1], a))
  return Layer(name, kind, blobs)


def decode_net(buf: bytes) -> list[Layer]:
  """The layers of a serialised NetParameter, in file order (both `layer` and legacy V1 `layers`)."""
  layers = []
  for field, wire, value, tag_at in _fields(buf, 0, len(buf)):
    if field in (NET_LAYER, NET_LAYERS_V1) and wire == LENGTH:
      layers.append(_layer(buf, value[0], value[1], tag_at, v1=field == NET_LAYERS_V1))
  return layers


def read_caffemodel(path: str) -> list[Layer]:
  """The layers of a .caffemodel file; a truncated or foreign file raises ValueError naming the byte offset."""
  with open(path, 'rb') as f:
    buf = f.read()
  try:
    layers = decode_net(buf)
  except DecodeError as e:
    raise InputError(f'{path}: not a complete .caffemodel ({len(buf)} bytes): decoding failed {e}') from None
  if not layers:
    raise InputError(f'{path}: not a .caffemodel: no layers in {len(buf)} bytes')
  return layers


# ------------------------------------------------------------------ writing (tests, and exporting weights)


def _encode_varint(n: int) -> bytes:
  n &= (1 << 64) - 1
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _key(field: int, wire: int) -> bytes:
  return _encode_varint(field << 3 | wire)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _key(field, LENGTH) + _encode_varint(len(payload)) + payload


def encode_blob(array: np.ndarray, legacy: bool = False) -> bytes:
  """A BlobProto: `shape` and packed float data, or (legacy, as 2014 files) num/channels/height/width."""
  array = np.asarray(array, np.float32)
  if legacy:
    if array.ndim > 4:
      raise InputError(f'a legacy blob has at most 4 dimensions, got shape {array.shape}')
    dims = (1,) * (4 - array.ndim) + array.shape
    out = b''.join(_key(f, VARINT) + _encode_varint(d) for f, d in
                   zip((BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH), dims))
  else:
    dims = b''.join(_encode_varint(d) for d in array.shape)
    out = _length_delimited(BLOB_SHAPE, _length_delimited(SHAPE_DIM, dims) if array.shape else b'')
  return out + _length_delimited(BLOB_DATA, array.astype('<f4').tobytes())


def encode_net(layers: list[Layer], v1: bool = False) -> bytes:
  """A serialised NetParameter holding `layers`: current `layer` messages, or V1 `layers` as 2014-era models."""
  v1_codes = {name: code for code, name in V1_TYPES.items()}
  out = []
  for layer in layers:
    if v1:
      if layer.type not in v1_codes:
        raise InputError(f'layer {layer.name}: no V1 type code for {layer.type!r}')
      body = (_length_delimited(V1_NAME, layer.name.encode()) + _key(V1_TYPE, VARINT)
              + _encode_varint(v1_codes[layer.type])
              + b''.join(_length_delimited(V1_BLOBS, encode_blob(b, legacy=True)) for b in layer.blobs))
      out.append(_length_delimited(NET_LAYERS_V1, body))
    else:
      body = (_length_delimited(LAYER_NAME, layer.name.encode()) + _length_delimited(LAYER_TYPE, layer.type.encode())
              + b''.join(_length_delimited(LAYER_BLOBS, encode_blob(b)) for b in layer.blobs))
      out.append(_length_delimited(NET_LAYER, body))
  return b''.join(out)


def write_caffemodel(path: str, layers: list[Layer], v1: bool = False):
  """Writes `layers` as a .caffemodel that Caffe (and `read_caffemodel`) reads."""
  with open(path, 'wb') as f:
    f.write(encode_net(layers, v1))

