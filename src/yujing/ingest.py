"""First server stage for raw packets: drop repeats, fix device clocks, mark stream breaks.

Packets come in arrival order from many devices. For each device this stage

- gives it a stable integer slot (its row in the device table), so later stages can keep
  per-device state in arrays;
- rejects packets already seen (``duplicate``) and packets older than what was already
  passed on (``out_of_order``): the picker's filters run forward in time and cannot take
  samples from the past;
- puts the packet on a corrected time line (``end_time_s``), because sensor clocks can be
  wrong by minutes;
- tells the picker when the device's stream breaks (``reset``) so it restarts its filters
  instead of filtering across a hole or a jump.

Clock model
-----------
``offset = arrival - device_time``. For a sensor with a correct (NTP) clock this is the
network latency plus a small clock error: -0.4..+1 s in the OpenEEW recordings. Two kinds of
device break that:

- a clock far behind (+1816 s, +1948 s, +3258 s in the recordings): the offset is large
  but steady while packets arrive once a second;
- a backlog: a sensor that lost its connection sends its buffered packets in a burst when
  it comes back. The device times are right, but the offsets are huge (up to 261 s) and
  fall by one packet length per packet, as packets recorded later arrive at the same time.

The clock error is estimated as the smallest offset seen since the clock (re)started
(the fastest packet had about zero latency). If it lies in [-1, +2] s the device clock is
trusted (correction 0). Below -1 s the device clock must be ahead (no packet arrives before
it was recorded): correction = that minimum. Above +2 s it is ambiguous, a clock behind or
a backlog, so the stage looks at the trend:

- first packet: assume the clock is behind and map the packet onto its arrival time
  (correction = offset), the safe choice when nothing else is known;
- the offset then drops by more than 1 s (a burst: the packets are a backlog): trust the
  device clock (correction 0) while the backlog drains;
- the minimum holds within 1 s for 3 s of device time: the clock is behind, correction =
  the minimum offset.

The smallest offset is the clock error *plus the latency of the fastest packets*
(0.1-0.35 s in the recordings). Left in, that latency would put every corrected device's
onsets late by it against the devices with good clocks, and three-device locations move
by 10 km for 0.13 s. So a corrected clock is mapped onto the time base of the trusted
devices instead: the correction is the device's minimum offset minus the median minimum
offset of the devices whose clocks are trusted (their minimum offset is that same latency
floor plus their NTP error). That is what the locator needs, times consistent across the
devices it uses; with no trusted device yet the floor is taken as 0 (the packet mapped
onto its fastest arrival). ``clock_correction_s`` reports the correction so applied.

``end_time_s = device_time + correction``. A packet whose corrected time lies more than
1 s after its arrival is impossible; on an established clock it means the clock jumped
ahead (``clock_jump``): the estimate restarts from this packet.

A clock jumping *back* looks, on one packet, exactly like an old packet delivered late
(the recordings have bursts of those). So packets earlier than the last accepted one are
rejected as ``out_of_order`` unless they form a run of their own that continues in real
time for 3 s (consecutive device times, steady offset); then the run is taken as the new
clock (``clock_jump``).

This differs from a rule on step sizes alone ("device time advanced 5 s more than arrival
time"): a gap whose packets were delivered late has exactly that signature
(2020_1_29/024: device time +15.2 s while arrival time +0.27 s) but is no clock jump.

Gaps are measured on device time: a device step longer than 1.5 packet lengths + 0.5 s is
a ``gap`` note whatever the arrival times did, since the samples are missing either way.
Real packets hold 32 samples at 31.25 Hz (1.024 s) and their device times step 1.02-1.07 s;
that jitter is no gap.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import msgspec
import numpy as np

from yujing.records import MAX_SAMPLE_RATE_HZ, Device, Packet
from yujing.rejects import Rejects

#: Minimum offsets (arrival - device time, s) that mean "device clock right": NTP error
#: plus normal latency. Observed -0.38..+0.94 s in the OpenEEW recordings.
TRUSTED_OFFSET_S = (-1.0, 2.0)
#: How far (s) a corrected packet time may lie after its arrival before it counts as a
#: clock jump ahead; also the drop in offset that marks a backlog burst.
CLOCK_TOLERANCE_S = 1.0
#: Device time (s) an offset level must hold before it is believed to be the clock error.
SETTLE_S = 3.0
#: Change of correction (s) that moves the device's time line enough to restart filters.
CORRECTION_STEP_S = 1.0
#: Accepted device times remembered per device to spot repeats.
DUPLICATE_MEMORY = 32

# Clock states. The order matters: states <= _OFFSET have an established clock estimate.
_TRUSTED, _OFFSET, _PROVISIONAL, _DRAINING = range(4)


class IngestedPacket(msgspec.Struct, frozen=True):
    """A packet accepted by ``Ingest``, on the corrected time line.

    ``end_time_s``: time of the last sample, UNIX s, device clock plus correction.
    ``arrival_time_s``: when the server received it, UNIX s.
    ``samples_gal``: float64 array of shape (n, 3), columns x (vertical), y, z in gal;
    a transposed view of a (3, n) array, so each column is contiguous.
    ``reset``: the device's stream (re)starts here (first packet, gap longer than
    ``max_gap_s``, clock jump or corrected-clock change); filters must be re-initialised.
    ``gap_s``: seconds of samples missing before this packet (0 when continuous).
    ``clock_correction_s``: what was added to the device time, s.
    """

    slot: int
    device_id: str
    end_time_s: float
    arrival_time_s: float
    sample_rate_hz: float
    samples_gal: Any
    reset: bool
    gap_s: float
    clock_correction_s: float = 0.0


#: the clock offset is the ROBUST_LOWS-th smallest (cloud_t - device_t) seen
ROBUST_LOWS = 3


class _DeviceState:
    """Per-device memory: last accepted packet, recent device times, clock estimate."""

    __slots__ = (
        "slot",
        "last_d",
        "recent",
        "state",
        "correction",
        "min_off",
        "lows",
        "level_off",
        "level_d",
        "cand_first_d",
        "cand_first_off",
        "cand_last_d",
        "cand_min_off",
    )

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.last_d = -math.inf
        self.recent: deque[float] = deque(maxlen=DUPLICATE_MEMORY)
        self.state = _PROVISIONAL
        self.correction = 0.0
        self.min_off = math.inf
        self.lows: list[float] = []
        self.level_off = math.inf
        self.level_d = -math.inf
        self.cand_first_d = math.nan  # backward-jump candidate run; NaN when none
        self.cand_first_off = 0.0
        self.cand_last_d = 0.0
        self.cand_min_off = 0.0

    def restart_clock(self, d: float, off: float) -> None:
        """Estimate the clock afresh from one packet (first packet, or after a jump ahead)."""
        self.min_off = self.level_off = off
        self.lows = [off]
        self.level_d = d
        lo, hi = TRUSTED_OFFSET_S
        if lo <= off <= hi:
            self.state, self.correction = _TRUSTED, 0.0
        elif off < lo:
            self.state, self.correction = _OFFSET, off
        else:
            self.state, self.correction = _PROVISIONAL, off

    def update_clock(self, d: float, off: float) -> None:
        """Fold one more accepted packet into the clock estimate."""
        # the clock estimate is the third-smallest offset seen, not the smallest: one packet
        # with a wrong arrival stamp must not shift the device's clock for good
        if len(self.lows) < ROBUST_LOWS or off < self.lows[-1]:
            self.lows = sorted(self.lows + [off])[:ROBUST_LOWS]
        self.min_off = m = self.lows[-1]
        lo, hi = TRUSTED_OFFSET_S
        if lo <= m <= hi:
            self.state, self.correction = _TRUSTED, 0.0
        elif m < lo:
            # Negative offset cannot be latency: the device clock is ahead, no doubt.
            self.state, self.correction = _OFFSET, m
        elif self.state == _OFFSET:
            self.correction = m
        else:
            # Offset > +2 s, cause not yet known: clock behind or backlog.
            if off < self.level_off - CLOCK_TOLERANCE_S:
                self.state = _DRAINING
                self.level_off, self.level_d = off, d
            elif d - self.level_d >= SETTLE_S:
                self.state = _OFFSET
            self.correction = 0.0 if self.state == _DRAINING else m


class Ingest:
    """Checks and time-corrects raw packets fed in arrival order.

    ``devices``: the device table; its order fixes the slots 0..n-1.
    ``rejects``: where rejected packets and notes (gap, clock_jump, clock_corrected) go.
    ``max_gap_s``: a gap longer than this (s) resets the device's stream.
    """

    def __init__(
        self, devices: dict[str, Device], rejects: Rejects, max_gap_s: float = 5.0
    ) -> None:
        self.devices = devices
        self.rejects = rejects
        self.max_gap_s = max_gap_s
        self._slots = {device_id: i for i, device_id in enumerate(devices)}
        self._state: dict[str, _DeviceState] = {}
        # robust minimum offset of each device whose clock is trusted: the latency floor
        # (plus NTP error) that a corrected clock is mapped onto (see the module notes)
        self._trusted_floor: dict[str, float] = {}
        self._floor = 0.0

    def add_device(self, device: Device) -> None:
        """Take a device that joined while running (a sensor's hello): it gets the next
        slot. The caller adds it to the shared device table; a known id keeps its slot."""
        self._slots.setdefault(device.device_id, len(self._slots))

    @property
    def slots(self) -> dict[str, int]:
        """Slot of every device in the table."""
        return dict(self._slots)

    def accept(self, packet: Packet) -> IngestedPacket | None:
        """Check one packet; the accepted, time-corrected packet, or None if rejected."""
        dev = packet.device_id
        st = self._state.get(dev)
        if st is None:
            slot = self._slots.get(dev)
            if slot is None:
                self.rejects.add(
                    "unknown_device", f"device {dev!r}", "not in the device table"
                )
                return None
            st = self._state[dev] = _DeviceState(slot)

        d = packet.device_time_s
        c = packet.arrival_time_s
        sr = packet.sample_rate_hz
        x, y, z = packet.x_gal, packet.y_gal, packet.z_gal
        n = len(x)
        # The OpenEEW reader checks all this already; other sources may not.
        if not (n and len(y) == n and len(z) == n and 0.0 < sr <= MAX_SAMPLE_RATE_HZ):
            if not (n and y and z):
                reason = "missing_axis"
            elif len(y) != n or len(z) != n:
                reason = "axis_length_mismatch"
            else:
                reason = "bad_sample_rate"
            self.rejects.add(
                reason,
                f"device {dev} at device_t {d:.3f}",
                f"axes hold x={n}, y={len(y)}, z={len(z)} samples at sr={sr} Hz",
            )
            return None
        if not (math.isfinite(d) and math.isfinite(c)):
            self.rejects.add(
                "non_finite", f"device {dev}", f"device_t {d} or arrival {c} is not finite"
            )
            return None

        samples = np.array((x, y, z), dtype=np.float64).T
        if not np.isfinite(samples).all():
            # the OpenEEW reader already refuses these; a broker message may not have
            self.rejects.add(
                "non_finite",
                f"device {dev} at device_t {d:.3f}",
                "NaN or infinity among the samples",
            )
            return None

        off = c - d
        dur = n / sr
        reset = False
        gap_s = 0.0
        old_correction = st.correction

        if st.last_d == -math.inf:
            st.restart_clock(d, off)
            reset = True
            if abs(st.correction) > CORRECTION_STEP_S:
                self.rejects.note(
                    "clock_corrected",
                    f"device {dev} at arrival {c:.3f}",
                    f"first packet {off:+.3f} s off the arrival clock: correction "
                    f"{st.correction:+.3f} s",
                )
        elif d in st.recent:
            self.rejects.add(
                "duplicate",
                f"device {dev} at arrival {c:.3f}",
                f"device_t {d:.3f} was already accepted",
            )
            return None
        elif d < st.last_d:
            if not self._backward_jump(st, d, off, dur):
                self.rejects.add(
                    "out_of_order",
                    f"device {dev} at arrival {c:.3f}",
                    f"device_t {d:.3f} is {st.last_d - d:.3f} s before the last accepted packet",
                )
                return None
            # Device times of the old time line say nothing about the new one.
            st.recent.clear()
            self.rejects.note(
                "clock_jump",
                f"device {dev} at arrival {c:.3f}",
                f"device clock jumped back {st.last_d - d:.3f} s; correction now "
                f"{st.correction:+.3f} s",
            )
            reset = True
        elif st.state <= _OFFSET and off < st.correction - CLOCK_TOLERANCE_S:
            # On an established clock, the packet would have been recorded after it
            # arrived: the clock jumped ahead. (While provisional or draining, a falling
            # offset is the backlog emptying, handled by update_clock.)
            jump = st.correction - off
            st.restart_clock(d, off)
            st.recent.clear()
            self.rejects.note(
                "clock_jump",
                f"device {dev} at arrival {c:.3f}",
                f"device clock jumped ahead ~{jump:.3f} s; correction now {st.correction:+.3f} s",
            )
            reset = True
        else:
            step = d - st.last_d
            if step > 1.5 * dur + 0.5:
                gap_s = step - dur
                reset = gap_s > self.max_gap_s
                self.rejects.note(
                    "gap",
                    f"device {dev} at arrival {c:.3f}",
                    f"{gap_s:.3f} s missing before device_t {d:.3f}",
                )
            st.update_clock(d, off)
            if abs(st.correction - old_correction) > CORRECTION_STEP_S:
                reset = True
                self.rejects.note(
                    "clock_corrected",
                    f"device {dev} at arrival {c:.3f}",
                    f"clock correction {old_correction:+.3f} s -> {st.correction:+.3f} s",
                )

        st.cand_first_d = math.nan
        st.last_d = d
        st.recent.append(d)
        self._note_floor(dev, st)
        # a corrected clock lands on the trusted devices' time base: its minimum offset
        # minus theirs (the latency both hold); a trusted or draining clock is left alone
        correction = st.correction - self._floor if st.state in (_OFFSET, _PROVISIONAL) else 0.0
        return IngestedPacket(
            st.slot,
            dev,
            d + correction,
            c,
            sr,
            samples,
            reset,
            gap_s,
            correction,
        )

    @property
    def latency_floor_s(self) -> float:
        """Median robust minimum offset (arrival - device time, s) of the devices whose
        clocks are trusted; 0 while there is none. Subtracted from corrected clocks."""
        return self._floor

    def _note_floor(self, dev: str, st: _DeviceState) -> None:
        """Keep the trusted devices' minimum offsets and their median up to date."""
        if st.state == _TRUSTED and len(st.lows) >= ROBUST_LOWS:
            if self._trusted_floor.get(dev) == st.min_off:
                return
            self._trusted_floor[dev] = st.min_off
        elif self._trusted_floor.pop(dev, None) is None:
            return
        v = self._trusted_floor.values()
        self._floor = float(np.median(np.fromiter(v, float, len(v)))) if v else 0.0

    def _backward_jump(self, st: _DeviceState, d: float, off: float, dur: float) -> bool:
        """Track packets older than the last accepted one; True once they prove a clock jump back.

        A candidate run must continue packet by packet (no gap) with a steady offset, i.e.
        arrive in real time, for ``SETTLE_S`` of device time. A late burst of old packets
        fails: its offsets fall by a packet length per packet.
        """
        step = d - st.cand_last_d
        if (
            st.cand_first_d == st.cand_first_d  # a run exists (not NaN)
            and 0.0 < step <= 1.5 * dur + 0.5
            and off >= st.cand_first_off - CLOCK_TOLERANCE_S
        ):
            st.cand_last_d = d
            if off < st.cand_min_off:
                st.cand_min_off = off
            if d - st.cand_first_d >= SETTLE_S:
                # The run is the new clock, already settled over SETTLE_S.
                st.restart_clock(st.cand_first_d, st.cand_min_off)
                if st.state == _PROVISIONAL:
                    st.state = _OFFSET
                return True
            return False
        st.cand_first_d = st.cand_last_d = d
        st.cand_first_off = st.cand_min_off = off
        return False
