"""TFRecord framing: uint64 length, masked CRC32C of it, payload, masked CRC32C of the payload.

Written and checked here with google-crc32c, without TensorFlow. Any TFRecord file (ours, or one
TensorFlow wrote) can be scanned with iter_framed; a corrupt record raises CorruptRecordError
naming the file and the record.
"""

from __future__ import annotations

import struct
from typing import Iterator

import google_crc32c

from data_pipelines.records import CorruptRecordError


def crc32c(data: bytes) -> int:
    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
    # TFRecord stores a rotated+offset CRC so that a CRC of data that itself contains CRCs
    # does not degenerate.
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
    """TFRecord framing: uint64 length, masked CRC of those 8 bytes, payload, masked CRC of it."""
    head = struct.pack('<Q', len(payload))
    return b''.join(
        (
            head,
            struct.pack('<I', masked_crc32c(head)),
            payload,
            struct.pack('<I', masked_crc32c(payload)),
        )
    )


def unframe(buf: bytes, expected_len: int | None = None) -> tuple[bytes, str | None]:
    """Checks one framed record held entirely in `buf`; returns (payload, None) or (b'', why)."""
    if len(buf) < 16:
        return b'', f'truncated: {len(buf)} bytes, a record needs at least 16'
    head = buf[:8]
    if struct.unpack('<I', buf[8:12])[0] != masked_crc32c(head):
        return b'', 'length CRC mismatch'
    (length,) = struct.unpack('<Q', head)
    if expected_len is not None and length != expected_len:
        return b'', f'length field {length} disagrees with the index ({expected_len})'
    if len(buf) < 16 + length:
        return b'', f'truncated: record needs {16 + length} bytes, {len(buf)} available'
    payload = buf[12 : 12 + length]
    if struct.unpack('<I', buf[12 + length : 16 + length])[0] != masked_crc32c(payload):
        return b'', 'data CRC mismatch'
    return payload, None


def iter_framed(path: str) -> Iterator[tuple[int, bytes]]:
    """Scans any TFRecord file (ours or TensorFlow's) without an index: yields (offset, payload).

    Every CRC is checked; a bad record raises CorruptRecordError naming the file and record.
    """
    with open(path, 'rb') as f:
        i, offset = 0, 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise CorruptRecordError(path, i, None, f'truncated header at byte {offset}')
            (length,) = struct.unpack('<Q', header[:8])
            rest = (
                f.read(length + 4)
                if struct.unpack('<I', header[8:])[0] == masked_crc32c(header[:8])
                else b''
            )
            payload, why = unframe(header + rest)
            if why:
                raise CorruptRecordError(path, i, None, f'{why} (at byte {offset})')
            yield offset, payload
            i, offset = i + 1, offset + 16 + length
