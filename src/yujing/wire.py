"""Compact wire format for alerts going to devices.

People and the API read alerts as JSON (``alerting.alert_to_json``), where a tier's cells
are H3 strings: an M7.4's alert is ~24 kB that way. Devices get msgpack instead, with each
tier's compact cell set packed as sorted 64-bit H3 indexes, delta-encoded as LEB128
varints and deflated: the same M7.4 alert is ~1.5 kB, small enough for one MQTT packet or
a push notification. Decoding restores an :class:`~yujing.records.Alert` equal to the one
encoded (cells sorted).
"""

from __future__ import annotations

import zlib

import h3
import msgspec

from .records import SCHEMA_VERSION, Alert, AlertTier

MAX_BYTES = 8000


class _WireTier(msgspec.Struct, array_like=True):
    name: str
    min_mmi: float
    cells: bytes


class _WireAlert(msgspec.Struct, array_like=True):
    schema_version: int
    alert_id: str
    event_id: str
    version: int
    msg_type: str
    issued_at_s: float
    origin_time_s: float
    latitude: float
    longitude: float
    depth_km: float
    magnitude: float
    magnitude_sigma: float
    tiers: list[_WireTier]
    h3_resolution: int
    gmpe: str
    event_version: int


def pack_cells(cells) -> bytes:
    """Sorted H3 cells -> deflated delta-LEB128 bytes."""
    ints = sorted(h3.str_to_int(c) for c in cells)
    out = bytearray()
    prev = 0
    for i in ints:
        n = i - prev
        prev = i
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                break
    return zlib.compress(bytes(out), 9)


#: largest decompressed cell list accepted, bytes: a million cells of ~10-byte varints. A
#: message is small on the wire, but zlib expands ~1000x: a device must not be made to
#: allocate gigabytes by one forged alert.
MAX_CELL_BYTES = 16 * 1024 * 1024


def unpack_cells(data: bytes) -> tuple[str, ...]:
    """Inverse of :func:`pack_cells`; ValueError on anything that is not a packed list of
    valid H3 cells."""
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data, MAX_CELL_BYTES)
    except zlib.error as exc:
        raise ValueError(f"cell list is not zlib data: {exc}") from None
    if d.unconsumed_tail:
        raise ValueError(f"cell list larger than {MAX_CELL_BYTES} bytes unpacked")
    if not d.eof:
        raise ValueError("cell list truncated: the zlib stream does not end")
    cells = []
    value = shift = prev = 0
    for b in raw:
        value |= (b & 0x7F) << shift
        if b & 0x80:
            shift += 7
            continue
        prev += value
        cell = h3.int_to_str(prev) if prev < 1 << 64 else ""
        if not cell or not h3.is_valid_cell(cell):
            raise ValueError(f"cell list holds {prev:#x}, not an H3 cell")
        cells.append(cell)
        value = shift = 0
    if shift:
        raise ValueError("truncated cell list: the last varint is incomplete")
    return tuple(cells)


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(_WireAlert)


def encode_alert(alert: Alert) -> bytes:
    """The alert as compact msgpack for devices."""
    return _ENC.encode(
        _WireAlert(
            schema_version=alert.schema_version,
            alert_id=alert.alert_id,
            event_id=alert.event_id,
            version=alert.version,
            msg_type=alert.msg_type,
            issued_at_s=alert.issued_at_s,
            origin_time_s=alert.origin_time_s,
            latitude=alert.latitude,
            longitude=alert.longitude,
            depth_km=alert.depth_km,
            magnitude=alert.magnitude,
            magnitude_sigma=alert.magnitude_sigma,
            tiers=[_WireTier(t.name, t.min_mmi, pack_cells(t.cells)) for t in alert.tiers],
            h3_resolution=alert.h3_resolution,
            gmpe=alert.gmpe,
            event_version=alert.event_version,
        )
    )


def decode_alert(data: bytes) -> Alert:
    """Inverse of :func:`encode_alert`; raises ``ValueError`` on a malformed message or a
    schema version this code does not know."""
    try:
        w = _DEC.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a yujing alert message: {exc}") from None
    if w.schema_version != SCHEMA_VERSION:
        raise ValueError(f"alert schema version {w.schema_version}; this device understands {SCHEMA_VERSION}")
    return Alert(
        alert_id=w.alert_id,
        event_id=w.event_id,
        version=w.version,
        msg_type=w.msg_type,
        issued_at_s=w.issued_at_s,
        origin_time_s=w.origin_time_s,
        latitude=w.latitude,
        longitude=w.longitude,
        depth_km=w.depth_km,
        magnitude=w.magnitude,
        magnitude_sigma=w.magnitude_sigma,
        tiers=tuple(AlertTier(t.name, t.min_mmi, unpack_cells(t.cells)) for t in w.tiers),
        h3_resolution=w.h3_resolution,
        gmpe=w.gmpe,
        event_version=w.event_version,
        schema_version=w.schema_version,
    )
