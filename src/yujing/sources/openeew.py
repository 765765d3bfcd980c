"""Reader for OpenEEW recordings: ``events/<event>/<device_id>/<MM>.jsonl`` plus ``devices.json``.

Each line of a ``.jsonl`` file is one packet as the device sent it::

    {"country_code": "mx", "device_id": "000", "x": [...], "y": [...], "z": [...],
     "device_t": 1518809012.345, "cloud_t": 1518809012.412, "sr": 31.25}

``x``, ``y``, ``z`` are accelerations in gal (``x`` vertical), ``device_t`` the sensor clock
at the last sample (UNIX s, may be wrong), ``cloud_t`` the server arrival time (UNIX s),
``sr`` the sample rate in Hz.

``iter_packets`` replays an event folder the way a server would have seen it: all devices
merged in arrival (``cloud_t``) order. It streams: each file is read line by line, and only
a small reorder buffer per file is held, so memory does not grow with the recording.
"""

from __future__ import annotations

import heapq
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from yujing.records import MAX_SAMPLE_RATE_HZ, Device, Packet
from yujing.rejects import Rejects

#: Lines held per file to put slightly late lines back into arrival order. Real files are
#: almost sorted (a line now and then is one packet late), so a small buffer is enough and
#: bounds memory per file.
REORDER_LINES = 64

ENV_DATA_DIR = "YUJING_OPENEEW_DIR"


class _WireLine(msgspec.Struct):
    """One line as sent. Axes default to empty so a missing axis is reported as such."""

    device_id: str
    device_t: float
    cloud_t: float
    sr: float
    x: list[float] = []
    y: list[float] = []
    z: list[float] = []
    country_code: str | None = None


# msgspec's decoder is strict about types (a string or bool where a number belongs is an
# error) but takes ints for floats. Its JSON parser also refuses NaN/Infinity tokens and
# numbers that overflow a double, so a line it decodes holds only finite values: no
# per-sample finiteness check is needed on the fast path.
_DECODER = msgspec.json.Decoder(_WireLine)
_DEVICES_DECODER = msgspec.json.Decoder(list[Device])


def default_data_dir() -> Path:
    """The OpenEEW data folder: ``$YUJING_OPENEEW_DIR``, else ``<repo>/../shared/data/openeew``."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env)
    # src/yujing/sources/openeew.py -> parents[3] is the repository root.
    return (Path(__file__).resolve().parents[3] / "../shared/data/openeew").resolve()


def load_devices(path: str | os.PathLike[str]) -> dict[str, Device]:
    """Read ``devices.json`` (a list of {device_id, latitude, longitude}, degrees).

    Returns the devices by id, in file order. Raises ``ValueError`` naming the file and
    the fault for malformed JSON, wrong types, duplicate ids or impossible coordinates,
    and ``FileNotFoundError`` if the file is missing.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"device table {path} does not exist") from None
    try:
        devices = _DEVICES_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(
            f"device table {path} is not a JSON list of "
            f"{{device_id, latitude, longitude}}: {exc}"
        ) from None
    table: dict[str, Device] = {}
    for i, dev in enumerate(devices):
        if dev.device_id in table:
            raise ValueError(f"device table {path}: entry {i} repeats device_id {dev.device_id!r}")
        if not (math.isfinite(dev.latitude) and -90.0 <= dev.latitude <= 90.0):
            raise ValueError(
                f"device table {path}: device {dev.device_id!r} has latitude "
                f"{dev.latitude} outside [-90, 90] degrees"
            )
        if not (math.isfinite(dev.longitude) and -180.0 <= dev.longitude <= 180.0):
            raise ValueError(
                f"device table {path}: device {dev.device_id!r} has longitude "
                f"{dev.longitude} outside [-180, 180] degrees"
            )
        table[dev.device_id] = dev
    return table


def iter_event_dirs(data_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """The event folders under ``data_dir/events``, sorted by name."""
    events = Path(data_dir) / "events"
    if not events.is_dir():
        raise FileNotFoundError(f"no events folder at {events}")
    return iter(sorted(p for p in events.iterdir() if p.is_dir()))


def iter_packets(
    event_dir: str | os.PathLike[str],
    devices: dict[str, Device],
    rejects: Rejects,
) -> Iterator[Packet]:
    """Yield the packets of one event folder in arrival (``cloud_t``) order across devices.

    Reads ``event_dir/<device_id>/*.jsonl`` for any number of device folders, the files of
    a folder in name order. Each file is one stream; the streams are merged lazily with a
    heap, so memory is bounded by ``REORDER_LINES`` packets per open file.

    Lines that cannot be used are counted in ``rejects`` with the file, line number and
    fault, and skipped; nothing here raises on bad data. A line whose ``device_id``
    disagrees with its folder is rejected as ``device_mismatch``: the two claims cannot
    both be right, and guessing would feed one device's samples into another's stream.
    Blank lines are skipped without a count (editors and ``cat`` leave them; they carry no
    data). Ties in ``cloud_t`` go to the earlier file (device folder, then file name), then
    the earlier line, so a replay is deterministic.
    """
    event_dir = Path(event_dir)
    if not event_dir.is_dir():
        raise FileNotFoundError(f"event folder {event_dir} does not exist")
    files: list[tuple[str, Path]] = []
    for dev_dir in sorted(p for p in event_dir.iterdir() if p.is_dir()):
        files.extend((dev_dir.name, f) for f in sorted(dev_dir.glob("*.jsonl")))
    streams = [
        _file_stream(path, index, folder, devices, rejects)
        for index, (folder, path) in enumerate(files)
    ]
    for _, _, _, packet in heapq.merge(*streams):
        yield packet


def _file_stream(
    path: Path,
    index: int,
    folder: str,
    devices: dict[str, Device],
    rejects: Rejects,
) -> Iterator[tuple[float, int, int, Packet]]:
    """One file's valid packets in ``cloud_t`` order, as (cloud_t, file index, line, packet).

    Late lines are put back in order through a heap of ``REORDER_LINES``; a line older than
    one already passed on cannot be, and is rejected as ``out_of_order``.
    """
    name = str(path)
    heap: list[tuple[float, int, int, Packet]] = []
    emitted = -math.inf
    decode = _DECODER.decode
    push, pushpop = heapq.heappush, heapq.heappushpop
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                w = decode(raw)
            except msgspec.DecodeError as exc:
                if raw.strip():
                    reason, detail = _classify_decode_error(raw, exc)
                    rejects.add(reason, f"{name}:{lineno}", detail)
                continue
            n = len(w.x)
            if n == 0 or not w.y or not w.z:
                missing = [a for a, v in (("x", w.x), ("y", w.y), ("z", w.z)) if not v]
                rejects.add(
                    "missing_axis",
                    f"{name}:{lineno}",
                    f"axis {', '.join(missing)} missing or empty (device {w.device_id!r})",
                )
                continue
            if len(w.y) != n or len(w.z) != n:
                rejects.add(
                    "axis_length_mismatch",
                    f"{name}:{lineno}",
                    f"axes hold x={n}, y={len(w.y)}, z={len(w.z)} samples (device {w.device_id!r})",
                )
                continue
            if not 0.0 < w.sr <= MAX_SAMPLE_RATE_HZ:
                rejects.add(
                    "bad_sample_rate",
                    f"{name}:{lineno}",
                    f"sample rate sr={w.sr} Hz is outside (0, {MAX_SAMPLE_RATE_HZ:g}] "
                    f"(device {w.device_id!r})",
                )
                continue
            if w.device_id != folder:
                rejects.add(
                    "device_mismatch",
                    f"{name}:{lineno}",
                    f"line says device_id {w.device_id!r} but lies in folder {folder!r}",
                )
                continue
            if w.device_id not in devices:
                rejects.add(
                    "unknown_device",
                    f"{name}:{lineno}",
                    f"device_id {w.device_id!r} is not in the device table",
                )
                continue
            c = w.cloud_t
            if c < emitted:
                rejects.add(
                    "out_of_order",
                    f"{name}:{lineno}",
                    f"cloud_t {c:.3f} is {emitted - c:.3f} s older than a line already "
                    f"replayed from this file (more than {REORDER_LINES} lines late)",
                )
                continue
            item = (
                c,
                index,
                lineno,
                Packet(w.device_id, w.device_t, c, w.sr, w.x, w.y, w.z),
            )
            if len(heap) < REORDER_LINES:
                push(heap, item)
            else:
                item = pushpop(heap, item)
                emitted = item[0]
                yield item
    while heap:
        yield heapq.heappop(heap)


def _classify_decode_error(raw: bytes, exc: msgspec.DecodeError) -> tuple[str, str]:
    """Reason and message for a line msgspec refused. Only runs for bad lines."""
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        if text.startswith("Number out of range"):
            return "non_finite", f"number overflows to infinity {_at(text)}"
        if text.startswith("Object missing required field"):
            return "missing_field", text
        return "bad_type", text
    # msgspec refuses NaN/Infinity tokens as malformed JSON; Python's json accepts them,
    # which tells a line carrying non-finite numbers from a truncated or garbled one.
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "corrupt_json", f"not valid JSON ({text})"
    field = _non_finite_field(obj)
    if field is not None:
        return "non_finite", f"NaN or infinity in {field}"
    return "corrupt_json", f"not valid JSON ({text})"


def _at(text: str) -> str:
    """The ``at `$.x[3]``` part of a msgspec error, if any."""
    i = text.find(" - at ")
    return text[i + 3 :] if i >= 0 else ""


def _non_finite_field(obj: object) -> str | None:
    """Name of the first top-level field holding a non-finite float (or a list containing one)."""
    if not isinstance(obj, dict):
        return None
    for key, value in obj.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                return str(key)
    return None
