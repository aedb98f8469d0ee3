"""dlib's packed integers, scalar floats, strings and tensors, on synthetic bytes."""

from __future__ import annotations

import numpy as np
import pytest

from app.errors import UserError
from app.models.dlib_serialization import (
    DlibFormatError,
    DlibReader,
    pack_int,
    pack_string,
    pack_tensor,
)


@pytest.mark.parametrize(
    ("encoded", "value"),
    [
        (b"\x01\x00", 0),
        (b"\x01\x02", 2),
        (b"\x01\x96", 150),
        (b"\x02\x80\x12", 4736),  # the first conv's parameter count in the real file
        (b"\x81\x11", -17),  # sign bit 0x80 with one byte
        (b"\x00", 0),
        (b"\x04\x78\x56\x34\x12", 0x12345678),
    ],
)
def test_read_int_decodes_dlib_packed_integers(encoded: bytes, value: int) -> None:
    reader = DlibReader(encoded + b"tail")
    assert reader.read_int() == value
    assert reader.offset == len(encoded)


@pytest.mark.parametrize("value", [0, 1, 255, 256, 65535, 2**40 + 7, -1, -300, -(2**33)])
def test_pack_int_round_trips(value: int) -> None:
    assert DlibReader(pack_int(value)).read_int() == value


def test_read_int_rejects_an_impossible_header() -> None:
    with pytest.raises(DlibFormatError):
        DlibReader(b"\x0f" + bytes(15)).read_int()


def test_read_float_uses_mantissa_and_binary_exponent() -> None:
    # dlib's avg_red in the real model: mantissa 0xf59062, exponent -17
    reader = DlibReader(b"\x03\x62\x90\xf5\x81\x11")
    assert reader.read_float() == pytest.approx(122.782, abs=1e-4)


def test_read_string() -> None:
    reader = DlibReader(pack_string("con_4") + pack_int(7))
    assert reader.read_string() == "con_4"
    assert reader.read_int() == 7


def test_read_tensor_gives_shape_and_little_endian_float32_values() -> None:
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7
    raw = b"\x01\x02" + b"\x01\x02\x01\x03\x01\x02\x01\x02" + values.astype("<f4").tobytes()
    assert raw == pack_tensor(values)
    reader = DlibReader(raw + b"\xff")
    tensor = reader.read_tensor()
    assert tensor.shape == (2, 3, 2, 2)
    assert tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor, values)
    assert reader.offset == len(raw)


def test_read_tensor_pads_missing_dims_with_ones() -> None:
    tensor = DlibReader(pack_tensor(np.ones(5, dtype=np.float32))).read_tensor()
    assert tensor.shape == (5, 1, 1, 1)


def test_truncated_tensor_is_a_user_error_not_a_crash() -> None:
    raw = pack_tensor(np.ones((4, 4), dtype=np.float32))[:-3]
    with pytest.raises(UserError, match="ends early"):
        DlibReader(raw).read_tensor()


def test_unknown_tensor_version_is_rejected() -> None:
    raw = b"\x01\x03" + pack_tensor(np.ones(2, dtype=np.float32))[2:]
    with pytest.raises(DlibFormatError, match="version 3"):
        DlibReader(raw).read_tensor()
