"""Reader for the pieces of dlib's binary serialization that a trained DNN file uses.

dlib writes integers "packed": one header byte whose low nibble is the number of value bytes and whose 0x80
bit is the sign, then the magnitude in little-endian bytes. Scalars float/double are a packed int64 mantissa
and a packed int16 exponent (value = mantissa * 2**exponent). Strings are a packed length and raw bytes. A
tensor is a packed version (2), four packed dims (num_samples, k, nr, nc), then raw little-endian float32s.
"""

from __future__ import annotations

import numpy as np

from app.errors import UserError

TENSOR_VERSION = 2


class DlibFormatError(UserError):
    """The bytes are not the dlib serialization the converter expects."""


class DlibReader:
    """Sequential reader over a dlib serialized byte buffer."""

    def __init__(self, data: bytes | memoryview, offset: int = 0) -> None:
        self.data = memoryview(data)
        self.offset = offset

    def _take(self, count: int) -> memoryview:
        end = self.offset + count
        if count < 0 or end > len(self.data):
            raise DlibFormatError(
                f"dlib model file ends early: wanted {count} bytes at offset {self.offset}; "
                "the file is truncated or not a dlib model, delete it and fetch again"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def read_int(self) -> int:
        """One packed integer."""
        header = self._take(1)[0]
        size = header & 0x0F
        if size > 8 or header & 0x70:
            raise DlibFormatError(f"bad packed-int header byte 0x{header:02x} at offset {self.offset - 1}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if header & 0x80 else value

    def read_float(self) -> float:
        """One dlib scalar float/double (mantissa and base-2 exponent)."""
        mantissa = self.read_int()
        exponent = self.read_int()
        return float(np.ldexp(float(mantissa), exponent))

    def read_string(self) -> str:
        length = self.read_int()
        return bytes(self._take(length)).decode("latin-1")

    def read_tensor(self) -> np.ndarray:
        """One dlib tensor as a float32 array of shape (num_samples, k, nr, nc)."""
        version = self.read_int()
        if version != TENSOR_VERSION:
            raise DlibFormatError(
                f"unsupported dlib tensor version {version} at {self.offset} (expected {TENSOR_VERSION})"
            )
        shape = tuple(self.read_int() for _ in range(4))
        if any(dim < 0 for dim in shape):
            raise DlibFormatError(f"negative dlib tensor dimension {shape} at offset {self.offset}")
        count = int(np.prod(shape))
        values = np.frombuffer(self._take(4 * count), dtype="<f4")
        return values.astype(np.float32).reshape(shape)


def pack_int(value: int) -> bytes:
    """Encode one integer the way dlib does (used by tests and to build synthetic files)."""
    magnitude = abs(value)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def pack_tensor(array: np.ndarray) -> bytes:
    """Encode a float32 array of up to four dims (padded with trailing 1s) as a dlib tensor."""
    shape = tuple(array.shape) + (1,) * (4 - array.ndim)
    header = pack_int(TENSOR_VERSION) + b"".join(pack_int(dim) for dim in shape)
    return header + np.ascontiguousarray(array, dtype="<f4").tobytes()


def pack_string(text: str) -> bytes:
    raw = text.encode("latin-1")
    return pack_int(len(raw)) + raw
