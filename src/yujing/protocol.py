"""The device protocol, version 1: what phones and sensors send and receive over MQTT.

Topics (``/``-separated for MQTT; NATS sees the same names with ``.``):

===============================  =========================================  ============
topic                            payload (msgpack map)                      direction
===============================  =========================================  ============
``yj/v1/trig/<res5 cell>``       :class:`TriggerMsg`: an onset, or an        device -> server
                                 amplitude update of one
``yj/v1/pkt/<res5 cell>``        :class:`PacketMsg`: ~1 s of 3-axis          sensor -> server
                                 acceleration (fixed sensors, consented
                                 phones)
``yj/v1/hb/<res5 cell>``         :class:`HeartbeatMsg`: alive, able to       device -> server
                                 detect or not
``yj/v1/hello/<res5 cell>``      :class:`HelloMsg`: kind, rate, consent      device -> server
``yj/v1/consent/<res5 cell>``    :class:`ConsentMsg`: raw-upload consent     device -> server
                                 given or withdrawn
``yj/v1/alert/<res3 cell>``      alert, :func:`yujing.wire.encode_alert`     server -> device
                                 (retained: the last alert per area)
===============================  =========================================  ============

The ``<res5 cell>`` in a device's topic is the resolution-5 parent of the cell it reports
(~250 km^2): enough for the server to route messages to the engine that owns the region,
not enough to locate anyone. A message whose topic cell is not the parent of its own cell
is refused (``cell_mismatch``). The location a device reports is its H3 cell of resolution
``DEVICE_CELL_RES`` (7, ~5 km^2) or coarser, never finer: the server refuses finer cells
(``cell_too_fine``) rather than coarsen them, so that a device built wrong is noticed.

Devices subscribe to ``yj/v1/alert/<res3 cell>`` for their own resolution-3 cell (~12,000
km^2); a phone that moves re-subscribes. The server publishes each alert message to every
resolution-3 cell that meets one of its tiers, retained, and clears the retained message
once the alert has expired, so a phone that comes online during the shaking gets the
warning at once, and one that comes online the next day gets nothing.

Device times (``sent_s``, ``onset_s``, ``device_time_s``) are on the device's own clock,
UNIX seconds; the server compares ``sent_s`` with the arrival time to correct clocks that
are off (:func:`to_trigger`): a device's offset is the smallest arrival - sent among its
recent messages (heartbeats included), so a message that sat in a queue is not taken for
a clock error. Units are in the field names as in :mod:`yujing.records`.
Versioning: ``v`` is the schema version of the message; a field may be added with a
default without a new version; anything else is version 2, on ``yj/v2/...`` topics.
"""

from __future__ import annotations

import math

import h3
import msgspec

from .records import MAX_SAMPLE_RATE_HZ, Packet, Trigger

PROTOCOL_VERSION = 1
TOPIC_ROOT = f"yj/v{PROTOCOL_VERSION}"
#: Finest H3 resolution a device may report (~5 km^2 cells).
DEVICE_CELL_RES = 7
#: Resolution of the cell in device topics (routing to the engine that owns the region).
TOPIC_CELL_RES = 5
#: Resolution of the alert topics devices subscribe to.
ALERT_CELL_RES = 3
#: Offsets (arrival - sent, s) within which a device clock is trusted: network latency
#: and NTP error. Outside, the device clock is taken to be off by that much.
CLOCK_TRUST_S = (-1.0, 2.0)

KINDS = ("trig", "pkt", "hb", "hello", "consent")
DEVICE_KINDS = ("phone", "sensor")


class ProtocolError(ValueError):
    """A device message the server cannot use. ``reason`` is the counter's name
    (snake_case, as in :mod:`yujing.rejects`), the message says what was wrong."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class TriggerMsg(msgspec.Struct, frozen=True, omit_defaults=True):
    """An onset (``update`` 0) or an amplitude update. Amplitudes as in
    :class:`yujing.records.Trigger`; ``seq`` counts the device's messages (for replay
    protection); ``sig``, the last field of every message, is its signature
    (:mod:`yujing.security`: server key id + keyed-BLAKE2b tag)."""

    device: str
    cell: str
    sent_s: float
    onset_s: float
    window_s: float
    pga_gal: float
    pgv_cm_s: float
    pd_cm: float
    tau_c_s: float = 0.0
    snr: float = 0.0
    update: int = 0
    noise_pd_cm: float = 0.0
    noise_pga_gal: float = 0.0
    wa_horizontal_nm: float = 0.0
    wa_vertical_nm: float = 0.0
    noise_wa_nm: float = 0.0
    late_onset: bool = False
    seq: int = 0
    v: int = PROTOCOL_VERSION
    sig: bytes = b""


class PacketMsg(msgspec.Struct, frozen=True, omit_defaults=True):
    """About one second of 3-axis acceleration, gal; ``device_time_s`` is the device clock
    at the last sample. ``x_gal`` is vertical (the OpenEEW convention)."""

    device: str
    cell: str
    device_time_s: float
    sample_rate_hz: float
    x_gal: list[float]
    y_gal: list[float]
    z_gal: list[float]
    seq: int = 0
    v: int = PROTOCOL_VERSION
    sig: bytes = b""


#: a heartbeat's period (``HeartbeatMsg.every_s``), s: the default, and the bounds a device
#: may declare (a minute: the engine's long-standing window; an hour: beyond that a phone's
#: place and stillness are guesses)
HEARTBEAT_EVERY_S = 60.0
HEARTBEAT_EVERY_RANGE_S = (10.0, 3600.0)


class HeartbeatMsg(msgspec.Struct, frozen=True, omit_defaults=True):
    """Alive at ``sent_s``; ``ready``: lying still, able to detect (its silence during a
    quake nearby is evidence). ``every_s``: the phone's heartbeat period, s; it promises the
    next heartbeat within that time, and one at once whenever ``ready`` changes, so the
    engine counts it present (and, if ready, a witness) for 1.5 periods."""

    device: str
    cell: str
    sent_s: float
    ready: bool = True
    every_s: float = HEARTBEAT_EVERY_S
    seq: int = 0
    v: int = PROTOCOL_VERSION
    sig: bytes = b""


class HelloMsg(msgspec.Struct, frozen=True, omit_defaults=True):
    """Sent when a device connects: what it is and what it agreed to."""

    device: str
    cell: str
    sent_s: float
    kind: str = "phone"
    sample_rate_hz: float = 0.0
    raw_consent: bool = False
    app: str = ""
    seq: int = 0
    v: int = PROTOCOL_VERSION
    sig: bytes = b""


class ConsentMsg(msgspec.Struct, frozen=True, omit_defaults=True):
    """Raw-waveform upload consent given (``raw_consent`` true) or withdrawn."""

    device: str
    cell: str
    sent_s: float
    raw_consent: bool
    seq: int = 0
    v: int = PROTOCOL_VERSION
    sig: bytes = b""


DeviceMsg = TriggerMsg | PacketMsg | HeartbeatMsg | HelloMsg | ConsentMsg
_TYPES = {"trig": TriggerMsg, "pkt": PacketMsg, "hb": HeartbeatMsg, "hello": HelloMsg, "consent": ConsentMsg}
_DECODERS = {k: msgspec.msgpack.Decoder(t) for k, t in _TYPES.items()}
_ENC = msgspec.msgpack.Encoder()


# -------------------------------------------------------------------------- topics


def topic_for(kind: str, cell: str) -> str:
    """The MQTT topic a device publishes a message of ``kind`` on, for its reported
    ``cell`` (resolution <= 7)."""
    if kind not in _TYPES:
        raise ValueError(f"unknown message kind {kind!r}; one of {', '.join(KINDS)}")
    return f"{TOPIC_ROOT}/{kind}/{topic_cell(cell)}"


def topic_cell(cell: str) -> str:
    """The resolution-5 routing cell for a reported cell (itself if already coarser)."""
    res = h3.get_resolution(cell)
    return cell if res <= TOPIC_CELL_RES else h3.cell_to_parent(cell, TOPIC_CELL_RES)


def alert_topic(res3_cell: str) -> str:
    return f"{TOPIC_ROOT}/alert/{res3_cell}"


def alert_topic_for_position(latitude: float, longitude: float) -> str:
    """The topic a device at this position subscribes to (computed on the device)."""
    return alert_topic(h3.latlng_to_cell(latitude, longitude, ALERT_CELL_RES))


def alert_cells(tier_cells, h3_resolution: int) -> list[str]:
    """Resolution-3 cells that meet a set of (compact) alert cells, sorted."""
    out = set()
    for c in tier_cells:
        r = h3.get_resolution(c)
        if r <= ALERT_CELL_RES:
            # a compacted parent coarser than res 3 stands for all its res-3 children
            out.update(h3.cell_to_children(c, ALERT_CELL_RES) if r < ALERT_CELL_RES else [c])
        else:
            out.add(h3.cell_to_parent(c, ALERT_CELL_RES))
    return sorted(out)


def parse_topic(topic: str) -> tuple[str, str]:
    """``yj/v1/<kind>/<cell>`` (or the NATS form with dots) -> (kind, cell)."""
    got = _TOPICS.get(topic)
    if got is not None:
        return got
    parts = topic.replace(".", "/").split("/")
    if len(parts) != 4 or parts[0] != "yj" or not parts[1].startswith("v"):
        raise ProtocolError("bad_topic", f"topic {topic!r} is not yj/v<N>/<kind>/<cell>")
    if parts[1] != f"v{PROTOCOL_VERSION}":
        raise ProtocolError("bad_version", f"topic {topic!r}: this server speaks {TOPIC_ROOT}")
    if parts[2] not in _TYPES:
        raise ProtocolError("bad_topic", f"topic {topic!r}: unknown kind {parts[2]!r} (one of {', '.join(KINDS)})")
    return _remember(_TOPICS, topic, (parts[2], parts[3]))


#: Memos of what is the same for every message on a topic or from a cell (a million
#: phones sit in far fewer cells): the parsed topic, a cell's checks, its centre. Only
#: good values are kept, so an attacker's garbage cannot fill them with one-off entries
#: beyond the bound, at which a memo starts again empty.
_MEMO_MAX = 500_000
_TOPICS: dict[str, tuple[str, str]] = {}
_CELLS: dict[str, tuple[str, float, float]] = {}  # reported cell -> (topic cell, lat, lon)
_CENTRES: dict[str, tuple[float, float]] = {}  # the same cells -> (lat, lon), for cell_centre


def _remember(memo: dict, key, value):
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[key] = value
    return value


def _cell_facts(kind: str, msg) -> tuple[str, float, float]:
    """A reported cell's topic cell and centre, after checking it is a cell a device may
    report (:class:`ProtocolError` otherwise)."""
    cell = msg.cell
    got = _CELLS.get(cell)
    if got is not None:
        return got
    if not h3.is_valid_cell(cell):
        raise ProtocolError("bad_cell", f"{kind} message from {msg.device!r}: {cell!r} is not an H3 cell")
    if h3.get_resolution(cell) > DEVICE_CELL_RES:
        raise ProtocolError(
            "cell_too_fine",
            f"{kind} message from {msg.device!r}: cell {cell} has resolution {h3.get_resolution(cell)}; "
            f"devices report resolution {DEVICE_CELL_RES} or coarser",
        )
    lat, lon = h3.cell_to_latlng(cell)
    _remember(_CENTRES, cell, (lat, lon))
    return _remember(_CELLS, cell, (topic_cell(cell), lat, lon))


# -------------------------------------------------------------------------- codec


def encode(msg: DeviceMsg) -> bytes:
    return _ENC.encode(msg)


def decode(topic: str, payload: bytes) -> DeviceMsg:
    """Decode and check one device message; :class:`ProtocolError` says what was wrong."""
    # the hot path of every message (hundreds of thousands a second in a quake): what is
    # the same for every message on a topic (kind, topic cell, decoder, number checks)
    # is looked up once, a known cell's checks are one dict lookup
    route = _ROUTES.get(topic)
    if route is None:
        route = _route(topic)
    return _decode_routed(route, topic, payload)


def _decode_routed(route: tuple, topic: str, payload: bytes) -> DeviceMsg:
    kind, tcell, dec, check = route
    try:
        msg = dec.decode(payload)
    except msgspec.ValidationError as exc:
        raise ProtocolError("bad_field", f"{kind} message on {topic}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError("corrupt_msgpack", f"{kind} message on {topic}: {exc}") from None
    if msg.v != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"{kind} message from {msg.device!r} says v{msg.v} on {topic}")
    dev = msg.device
    if not dev or len(dev) > 64:
        raise ProtocolError("bad_field", f"{kind} message on {topic}: device id must be 1-64 characters")
    facts = _CELLS.get(msg.cell)
    if facts is None:
        facts = _cell_facts(kind, msg)
    if facts[0] != tcell:
        raise ProtocolError("cell_mismatch", f"{kind} message from {msg.device!r}: cell {msg.cell} is not in topic cell {tcell}")
    check(msg)
    return msg


def decode_batch(topics, payloads) -> list:
    """:func:`decode` of many messages (what arrived within an engine step): a list with,
    per message, the decoded message or the :class:`ProtocolError` that refuses it (a bad
    message refuses only itself, a decoder bug too: ``decode_error``). The same checks as
    :func:`decode`, with the topic memo looked up once per topic run."""
    out: list = []
    append = out.append
    routes = _ROUTES
    last_topic, route = None, None
    for topic, payload in zip(topics, payloads):
        try:
            if topic != last_topic:
                r = routes.get(topic)
                if r is None:
                    r = _route(topic)  # raises for a topic no device may use: route stays
                route, last_topic = r, topic
            append(_decode_routed(route, topic, payload))
        except ProtocolError as exc:
            append(exc)
        except Exception as exc:
            append(ProtocolError("decode_error", f"topic {topic}: {type(exc).__name__}: {exc}"))
    return out


def _route(topic: str) -> tuple:
    """A topic's kind, topic cell, decoder and number checks (:class:`ProtocolError` for
    a topic no device may use); remembered for the next message on it."""
    kind, tcell = parse_topic(topic)
    return _remember(_ROUTES, topic, (kind, tcell, _DECODERS[kind], _CHECKS[kind]))


def _check_trig(msg) -> None:
    # one sum is finite when every term is (the per-value test runs only when it is not:
    # a sum of huge finite values may overflow)
    if not _isfinite(msg.sent_s + msg.onset_s + msg.window_s + msg.pga_gal + msg.pgv_cm_s + msg.pd_cm + msg.tau_c_s + msg.snr):
        vals = (msg.sent_s, msg.onset_s, msg.window_s, msg.pga_gal, msg.pgv_cm_s, msg.pd_cm, msg.tau_c_s, msg.snr)
        if not all(_isfinite(v) for v in vals):
            raise ProtocolError("non_finite", f"trigger from {msg.device!r}: a time or amplitude is not finite")
    if msg.window_s < 0 or msg.pga_gal < 0 or msg.pgv_cm_s < 0 or msg.pd_cm < 0 or msg.update < 0:
        raise ProtocolError("bad_field", f"trigger from {msg.device!r}: negative window, amplitude or update number")


def _check_pkt(msg) -> None:
    n = len(msg.x_gal)
    if not (n and len(msg.y_gal) == n and len(msg.z_gal) == n):
        raise ProtocolError("axis_length_mismatch", f"packet from {msg.device!r}: axes hold {n}/{len(msg.y_gal)}/{len(msg.z_gal)} samples")
    if not (0.0 < msg.sample_rate_hz <= MAX_SAMPLE_RATE_HZ) or not math.isfinite(msg.device_time_s):
        raise ProtocolError("bad_field", f"packet from {msg.device!r}: sample rate {msg.sample_rate_hz} or time not usable")


def _check_sent(msg) -> None:
    if not _isfinite(msg.sent_s):
        kind = next(k for k, t in _TYPES.items() if type(msg) is t)
        raise ProtocolError("non_finite", f"{kind} message from {msg.device!r}: sent_s is not finite")


def _check_hb(msg) -> None:
    _check_sent(msg)
    lo, hi = HEARTBEAT_EVERY_RANGE_S
    if not lo <= msg.every_s <= hi:  # (False for NaN too)
        raise ProtocolError("bad_field", f"heartbeat from {msg.device!r}: every_s {msg.every_s!r} is not within {lo:g}-{hi:g} s")


def _check_hello(msg) -> None:
    _check_sent(msg)
    if msg.kind not in DEVICE_KINDS:
        raise ProtocolError("bad_field", f"hello from {msg.device!r}: kind {msg.kind!r} is not one of {DEVICE_KINDS}")


def _check_numbers(kind: str, msg) -> None:
    """The checks of a message's numbers that its type cannot express."""
    _CHECKS[kind](msg)


_isfinite = math.isfinite
_CHECKS = {"trig": _check_trig, "pkt": _check_pkt, "hb": _check_hb, "hello": _check_hello, "consent": _check_sent}
_ROUTES: dict[str, tuple] = {}  # topic -> (kind, topic cell, decoder, checks)


# -------------------------------------------------------------------------- to records


def clock_correction_s(offset_s: float) -> float:
    """What to add to a device time to put it on the server's time line, given the
    device's clock offset (arrival - sent of its least-delayed recent message, s): 0 while
    that is within network latency and NTP error, else the offset (the device clock is
    off; the latency of that message, < 1 s, is lost in the correction)."""
    lo, hi = CLOCK_TRUST_S
    return 0.0 if lo <= offset_s <= hi else offset_s


def cell_centre(cell: str) -> tuple[float, float]:
    """Centre (degrees) of an H3 cell."""
    got = _CENTRES.get(cell)
    return got if got is not None else h3.cell_to_latlng(cell)


def to_trigger(msg: TriggerMsg, arrival_s: float, clock_offset_s: float | None = None) -> Trigger:
    """The engine's record for a trigger message that arrived at ``arrival_s`` (server
    clock): position = its cell's centre, onset on the corrected time line.
    ``clock_offset_s``: the device's clock offset estimated from its recent messages
    (default: this message's own arrival - sent, which mistakes a message delayed in a
    queue for a clock error)."""
    # one call per trigger message (a quake brings tens of thousands a second): the
    # record is built positionally, in Trigger's field order
    got = _CENTRES.get(msg.cell)
    lat, lon = got if got is not None else h3.cell_to_latlng(msg.cell)
    off = arrival_s - msg.sent_s if clock_offset_s is None else clock_offset_s
    lo, hi = CLOCK_TRUST_S
    onset = msg.onset_s if lo <= off <= hi else msg.onset_s + off  # clock_correction_s
    return Trigger(
        msg.device,
        lat,
        lon,
        onset if onset < arrival_s else arrival_s,
        arrival_s,
        msg.window_s,
        msg.pga_gal,
        msg.pgv_cm_s,
        msg.pd_cm,
        msg.tau_c_s,
        msg.snr,
        msg.update,
        msg.noise_pd_cm,
        msg.noise_pga_gal,
        msg.wa_horizontal_nm,
        msg.wa_vertical_nm,
        msg.noise_wa_nm,
        msg.late_onset,
    )


def from_trigger(t: Trigger, cell: str, sent_s: float, seq: int = 0) -> TriggerMsg:
    """What a device sends for a trigger record (simulator, load generator, agent)."""
    return TriggerMsg(
        device=t.device_id,
        cell=cell,
        sent_s=sent_s,
        onset_s=t.onset_time_s,
        window_s=t.window_s,
        pga_gal=t.pga_gal,
        pgv_cm_s=t.pgv_cm_s,
        pd_cm=t.pd_cm,
        tau_c_s=t.tau_c_s,
        snr=t.snr,
        update=t.update,
        noise_pd_cm=t.noise_pd_cm,
        noise_pga_gal=t.noise_pga_gal,
        wa_horizontal_nm=t.wa_horizontal_nm,
        wa_vertical_nm=t.wa_vertical_nm,
        noise_wa_nm=t.noise_wa_nm,
        late_onset=t.late_onset,
        seq=seq,
    )


def to_packet(msg: PacketMsg, arrival_s: float) -> Packet:
    return Packet(
        device_id=msg.device,
        device_time_s=msg.device_time_s,
        arrival_time_s=arrival_s,
        sample_rate_hz=msg.sample_rate_hz,
        x_gal=msg.x_gal,
        y_gal=msg.y_gal,
        z_gal=msg.z_gal,
    )
