"""Stream rows into a ``.npy`` file whose final row count is unknown.

``numpy.save`` needs the whole array.  Here the header is written first with a
fixed size (the npy format pads the header dict with spaces), rows are
appended as they arrive while a CRC-32 of the row bytes is updated, and
``finish()`` rewrites the header in place with the final shape and fsyncs.
Any npy reader (``numpy.load(path, mmap_mode="r")``) opens the result.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

HEADER_BYTES = 128
"""Total header size (magic + length + padded dict); a multiple of 64 so rows stay aligned."""
_MAGIC_V1 = b"\x93NUMPY\x01\x00"


def npy_header(dtype: np.dtype, rows: int, cols: int) -> bytes:
    """A version-1.0 npy header of exactly ``HEADER_BYTES`` bytes for a C-order (rows, cols) array."""
    text = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}"
    dict_bytes = HEADER_BYTES - len(_MAGIC_V1) - 2
    if len(text) + 1 > dict_bytes:  # cannot happen below 10**30 rows
        raise ValueError(f"npy header for shape ({rows}, {cols}) does not fit in {HEADER_BYTES} bytes")
    return _MAGIC_V1 + struct.pack("<H", dict_bytes) + (text.ljust(dict_bytes - 1) + "\n").encode("latin1")


class StreamingNpyWriter:
    """Appends (n, cols) blocks of one dtype to a new ``.npy`` file."""

    def __init__(self, path: Path, dtype: np.dtype, cols: int) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.cols = cols
        self.rows = 0
        self.crc32 = 0
        """CRC-32 of the row bytes (everything after the header), updated as rows are written."""
        self._file = open(self.path, "wb", buffering=0)  # large writes go straight to the kernel
        self._file.write(npy_header(self.dtype, 0, cols))

    @property
    def nbytes(self) -> int:
        """Size of the file once finished."""
        return HEADER_BYTES + self.rows * self.cols * self.dtype.itemsize

    def write(self, block: np.ndarray) -> None:
        """Append a C-contiguous (n, cols) block of this writer's dtype."""
        if block.dtype != self.dtype or block.ndim != 2 or block.shape[1] != self.cols:
            raise ValueError(f"expected ({self.cols},)-wide rows of {self.dtype}, got {block.shape} {block.dtype}")
        data = memoryview(np.ascontiguousarray(block)).cast("B")
        self.crc32 = zlib.crc32(data, self.crc32)
        written = 0
        while written < len(data):  # a raw write may be partial
            written += self._file.write(data[written:])
        self.rows += block.shape[0]

    def finish(self) -> None:
        """Fix the shape in the header, flush to disk and close."""
        self._file.seek(0)
        self._file.write(npy_header(self.dtype, self.rows, self.cols))
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        """Close and delete the unfinished file."""
        self._file.close()
        self.path.unlink(missing_ok=True)


def crc32_of_rows(path: Path, chunk_bytes: int = 1 << 24) -> int:
    """CRC-32 of a finished npy file's row bytes, read back from disk (for verification)."""
    crc = 0
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        read_header(f)  # leaves the file at the first row byte
        while chunk := f.read(chunk_bytes):
            crc = zlib.crc32(chunk, crc)
    return crc
