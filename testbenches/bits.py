"""Packing of stream payloads to and from the flat bit vectors of exported Verilog ports.

A field map is ``{name: [offset, width, count, signed]}``: ``count`` 0 for a scalar field,
otherwise the number of elements of an array field, laid back to back from ``offset``.
``moepim.sim.ports`` derives field maps from the Amaranth layouts; this module needs only
numpy, so cocotb testbenches use it too.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_array", "unpack_array", "pack_fields", "unpack_fields"]


def pack_array(values, width: int) -> int:
    """Pack integers (two's complement, ``width`` bits each) into one int, element 0 lowest."""
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    if v.size == 0:
        return 0
    bits = ((v[:, None] >> np.arange(width, dtype=np.int64)) & 1).astype(np.uint8)
    packed = np.packbits(bits.reshape(-1), bitorder="little")
    return int.from_bytes(packed.tobytes(), "little")


def unpack_array(word: int, width: int, count: int, signed: bool, offset: int = 0) -> np.ndarray:
    """Inverse of :func:`pack_array`: ``count`` elements of ``width`` (< 63) bits from ``offset``."""
    if not 0 < width < 63:
        raise ValueError(f"array elements of {width} bits cannot be unpacked to int64")
    n_bits = width * count
    chunk = (word >> offset) & ((1 << n_bits) - 1)
    raw = np.frombuffer(chunk.to_bytes((n_bits + 7) // 8, "little"), dtype=np.uint8)
    bits = np.unpackbits(raw, bitorder="little")[:n_bits].reshape(count, width)
    values = bits.astype(np.int64) @ (np.int64(1) << np.arange(width, dtype=np.int64))
    if signed:
        values = np.where(values >= (1 << (width - 1)), values - (1 << width), values)
    return values


def _scalar(word: int, offset: int, width: int, signed: bool) -> int:
    value = (word >> offset) & ((1 << width) - 1)
    if signed and value >> (width - 1):
        value -= 1 << width
    return value


def pack_fields(fields: dict, **values) -> int:
    word = 0
    for name, value in values.items():
        offset, width, count, _ = fields[name]
        part = pack_array(value, width) if count else int(value) & ((1 << width) - 1)
        word |= part << offset
    return word


def unpack_fields(fields: dict, word: int) -> dict:
    out = {}
    for name, (offset, width, count, signed) in fields.items():
        if count:
            out[name] = unpack_array(word, width, count, signed, offset)
        else:
            out[name] = _scalar(word, offset, width, signed)
    return out
