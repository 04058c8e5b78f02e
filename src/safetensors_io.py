""".safetensors files as NumPy arrays (floating point as float32), without PyTorch.

Own reader rather than `safetensors.numpy` (installed with MindSpore): that one refuses
bfloat16 tensors, in which many published weights are stored. Layout: an 8-byte little-endian
header length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, optional
"__metadata__"}, then the tensors' bytes.
"""
import json
import math
import os

import numpy as np

from src.errors import UserError

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
MAX_HEADER = 100_000_000  # the largest JSON header the safetensors library reads


def is_safetensors(path):
    """Whether a file starts as a .safetensors file does: a header length that fits in the
    file, then the JSON header's opening brace (a PyTorch zip starts with PK, a pickle with
    0x80)."""
    with open(path, "rb") as handle:
        start = handle.read(9)
    return (len(start) == 9 and start[8:] == b"{"
            and int.from_bytes(start[:8], "little") <= os.path.getsize(path) - 8)


def read_safetensors(path):
    """{name: ndarray} of a .safetensors file (floats as float32); a UserError naming the file
    and what is wrong for anything that is not a complete, well-formed file."""
    if not os.path.isfile(path):
        raise UserError(f"weights: {path} is not a file")
    with open(path, "rb") as handle:
        blob = handle.read()
    header, data = _split(path, blob)
    return {name: _tensor(path, name, entry, data) for name, entry in header.items()
            if name != "__metadata__"}


def _split(path, blob):
    """(header dict, data bytes) of a file's contents."""
    if len(blob) < 8:
        raise UserError(f"weights: {path} is not a .safetensors file ({len(blob)} bytes)")
    size = int.from_bytes(blob[:8], "little")
    if size > min(MAX_HEADER, len(blob) - 8):
        raise UserError(f"weights: {path} is not a .safetensors file, or is truncated (header "
                        f"of {size} bytes in a file of {len(blob)})")
    try:
        header = json.loads(blob[8:8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"weights: {path} has an unreadable .safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise UserError(f"weights: {path} has a .safetensors header that is not a JSON object")
    return header, memoryview(blob)[8 + size:]


def _tensor(path, name, entry, data):
    """One tensor of the header, checked against the data it points into."""
    try:
        dtype, shape = entry["dtype"], [int(n) for n in entry["shape"]]
        begin, end = (int(n) for n in entry["data_offsets"])
        if not isinstance(dtype, str) or min(shape, default=0) < 0:
            raise ValueError(dtype)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"weights: {path}: tensor {name} has a malformed header entry "
                        f"{entry!r}") from None
    if dtype not in DTYPES:
        raise UserError(f"weights: {path}: tensor {name} has dtype {dtype}; readable: "
                        f"{', '.join(DTYPES)}")
    width = np.dtype(DTYPES[dtype]).itemsize
    if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * width:
        raise UserError(f"weights: {path} is truncated or corrupt: tensor {name} "
                        f"({dtype} {shape}) lies at bytes {begin}-{end} of {len(data)}")
    values = np.frombuffer(data[begin:end], dtype=np.dtype(DTYPES[dtype]).newbyteorder("<"))
    if dtype == "BF16":  # the upper half of a float32
        values = (values.astype(np.uint32) << 16).view(np.float32)
    elif values.dtype.kind == "f":
        values = values.astype(np.float32)
    return values.reshape(shape).astype(values.dtype.newbyteorder("="), copy=True)
