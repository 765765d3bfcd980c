"""MQTT 3.1.1 packets: the few the broker and the client here need, encoded and framed.

Only what devices and the service use: CONNECT/CONNACK, PUBLISH (QoS 0 and 1), PUBACK,
SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, PINGREQ/PINGRESP, DISCONNECT (OASIS MQTT 3.1.1,
sections 2-3). A malformed frame raises :class:`MqttError`, whose ``reason`` is counted.
"""

from __future__ import annotations

import struct

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

PINGREQ_PKT = b"\xc0\x00"
PINGRESP_PKT = b"\xd0\x00"
DISCONNECT_PKT = b"\xe0\x00"
#: Largest packet accepted (bytes). Device messages are < 8 kB; a raw packet of 1 s at
#: 200 Hz is ~15 kB. Anything near the protocol's 256 MB limit is an attack.
MAX_PACKET = 256 * 1024


class MqttError(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def mqtt_str(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def read_str(p: memoryview, k: int) -> tuple[bytes, int]:
    if k + 2 > len(p):
        raise MqttError("truncated", "string length runs past the packet")
    ln = (p[k] << 8) | p[k + 1]
    if k + 2 + ln > len(p):
        raise MqttError("truncated", "string runs past the packet")
    return bytes(p[k + 2 : k + 2 + ln]), k + 2 + ln


def connect_packet(client_id: str, keepalive_s: int = 60, clean: bool = True, username: str | None = None,
                   password: str | None = None) -> bytes:
    flags = 0x02 if clean else 0
    tail = mqtt_str(client_id.encode())
    if username is not None:
        flags |= 0x80
        tail += mqtt_str(username.encode())
    if password is not None:
        flags |= 0x40
        tail += mqtt_str(password.encode())
    body = mqtt_str(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + tail
    return bytes([0x10]) + remaining_length(len(body)) + body


def publish_header(topic: bytes, payload_len: int, qos: int = 0, retain: bool = False, packet_id: int = 0) -> bytes:
    vh = mqtt_str(topic) + (struct.pack("!H", packet_id) if qos else b"")
    return bytes([0x30 | (qos << 1) | (1 if retain else 0)]) + remaining_length(len(vh) + payload_len) + vh


def publish_packet(topic: str, payload: bytes, qos: int = 0, retain: bool = False, packet_id: int = 0) -> bytes:
    return publish_header(topic.encode(), len(payload), qos, retain, packet_id) + payload


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(mqtt_str(f.encode()) + bytes([q]) for f, q in filters)
    return bytes([0x82]) + remaining_length(len(body)) + body


def unsubscribe_packet(packet_id: int, filters: list[str]) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(mqtt_str(f.encode()) for f in filters)
    return bytes([0xA2]) + remaining_length(len(body)) + body


def valid_filter(f: str) -> bool:
    """A topic filter: ``#`` only as the whole last level, ``+`` only as a whole level."""
    if not f or "\0" in f or len(f) > 1024:
        return False
    levels = f.split("/")
    for i, lv in enumerate(levels):
        if "#" in lv and (lv != "#" or i != len(levels) - 1):
            return False
        if "+" in lv and lv != "+":
            return False
    return True


def filter_matches(filter_levels: list[str], topic_levels: list[str]) -> bool:
    # topics starting with $ are not matched by a leading wildcard (MQTT-4.7.2-1)
    if topic_levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for i, f in enumerate(filter_levels):
        if f == "#":
            return True
        if i >= len(topic_levels) or (f != "+" and f != topic_levels[i]):
            return False
    return len(filter_levels) == len(topic_levels)


class Framer:
    """Cuts a byte stream into packets: ``feed(data)`` yields ``(first byte, body)``.

    Bytes are gathered in a bytearray and a partial packet is not re-parsed until enough
    has arrived: a client that sends a large packet one byte at a time must cost linear,
    not quadratic, time (it shares the loop with the engine)."""

    __slots__ = ("buf", "max_packet", "need")

    def __init__(self, max_packet: int = MAX_PACKET):
        self.buf = bytearray()
        self.max_packet = max_packet
        self.need = 2  # bytes needed before parsing is worth trying again

    def feed(self, data: bytes):
        buf = self.buf
        buf += data
        if len(buf) < self.need:
            return
        i, n = 0, len(buf)
        try:
            while n - i >= 2:
                b0 = buf[i]
                j = i + 1
                rl = 0
                mul = 1
                while True:
                    if j >= n:
                        self.need = n - i + 1
                        return
                    c = buf[j]
                    j += 1
                    rl += (c & 0x7F) * mul
                    if not c & 0x80:
                        break
                    mul <<= 7
                    if mul > 1 << 21:
                        raise MqttError("bad_length", "remaining length longer than 4 bytes")
                if rl > self.max_packet:
                    raise MqttError("too_large", f"packet of {rl} bytes; the limit is {self.max_packet}")
                if j + rl > n:
                    self.need = j + rl - i
                    return
                body = bytes(buf[j : j + rl])  # a copy: the buffer is cut below
                i = j + rl
                yield b0, memoryview(body)
            self.need = 2
        finally:
            del buf[:i]
