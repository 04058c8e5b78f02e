"""src/safetensors_io.py reads what the safetensors library writes (float32, float16,
bfloat16, integers, empty tensors) and refuses truncated or malformed files in one line."""
import json
import struct

import numpy as np
import pytest

from src.errors import UserError
from src.safetensors_io import is_safetensors, read_safetensors

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def test_reads_every_dtype_the_library_writes(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {"w32": torch.randn(4, 3, 2, generator=generator),
               "w16": torch.randn(5, generator=generator).half(),
               "wbf16": torch.randn(3, 7, generator=generator).bfloat16(),
               "steps": torch.arange(-3, 3), "mask": torch.tensor([True, False]),
               "none": torch.zeros(0, 4)}
    path = str(tmp_path / "w.safetensors")
    safetensors_torch.save_file(tensors, path, metadata={"format": "pt"})
    read = read_safetensors(path)
    assert sorted(read) == sorted(tensors)
    for name, tensor in tensors.items():
        want = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
        assert read[name].dtype == want.dtype and read[name].shape == want.shape, name
        np.testing.assert_array_equal(read[name], want, err_msg=name)
    assert read["w32"].flags.writeable  # a copy, not a view of the file's bytes


def write_raw(path, header, data=b""):
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return str(path)


@pytest.mark.parametrize("header, data, message", [
    ({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(12),
     r"is truncated or corrupt: tensor a \(F32 \[2, 2\]\) lies at bytes 0-16 of 12"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8),
     "tensor a"),
    ({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, bytes(1),
     "tensor a has dtype F8_E4M3; readable: F64, F32"),
    ({"a": {"dtype": "F32", "shape": [1]}}, bytes(4), "tensor a has a malformed header entry"),
    ({"a": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}, bytes(16),
     "tensor a has a malformed header entry"),
    ({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, bytes(4),
     "tensor a has a malformed header entry"),
    ([1, 2], b"", "header that is not a JSON object"),
])
def test_malformed_files_are_named(tmp_path, header, data, message):
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(UserError, match=message) as error:
        read_safetensors(path)
    assert str(error.value).startswith(f"weights: {path}")


def test_not_a_safetensors_file(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("these are notes, not weights\n")
    with pytest.raises(UserError, match="not a .safetensors file, or is truncated"):
        read_safetensors(str(text))
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match=r"not a .safetensors file \(2 bytes\)"):
        read_safetensors(str(short))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(UserError, match="unreadable .safetensors header"):
        read_safetensors(str(broken))
    with pytest.raises(UserError, match="is not a file"):
        read_safetensors(str(tmp_path / "missing.safetensors"))


def test_recognised_by_content_whatever_the_name(tmp_path):
    named_bin = str(tmp_path / "weights.bin")
    safetensors_torch.save_file({"w": torch.ones(2)}, named_bin)
    torch_file, text = tmp_path / "w.pth", tmp_path / "notes.txt"
    torch.save({"w": torch.ones(2)}, str(torch_file))
    text.write_text("{not weights}\n")
    assert is_safetensors(named_bin)
    assert not is_safetensors(str(torch_file)) and not is_safetensors(str(text))
