"""The detection engine: packets (or device triggers) in, event updates out.

A plain synchronous state machine driven by message time. Its clock is the arrival time of
the newest message; it never reads the wall clock, so a replay of recorded data and the
live service run the same code, and a replay is deterministic.

Packets are gathered into steps of ``step_s`` seconds of arrival time and each step goes
through the stages together (which is what lets the picker vectorise across devices). A
step opens with its first message and closes ``step_s`` later, when a live server's timer
would fire; a replay sees that moment when the first message after it arrives. The
updates a step produces carry its closing time as ``issued_at_s``: a message cannot be
used before it arrived, and an update cannot be issued before the step that made it was
due. A device's first trigger of an onset (update 0) is associated on arrival, since
each may be the one that completes an event, which is then announced at once; the
step's time-driven work (relocating the events it joined) waits for the step's end. A
heartbeat batch (:meth:`feed_heartbeats`) closes a step early.
"""

from __future__ import annotations

import math

from .associate import Associator
from .ingest import Ingest
from .picker import Picker
from .records import Device, EventUpdate, Packet, Trigger
from .rejects import Rejects
from .settings import Settings

DEFAULT_STEP_S = 0.25


class Engine:
    """Feed packets in arrival order with :meth:`feed`; collect the returned updates."""

    def __init__(
        self,
        devices: dict[str, Device],
        settings: Settings | None = None,
        rejects: Rejects | None = None,
        step_s: float = DEFAULT_STEP_S,
        id_prefix: str = "yj",
    ):
        self.s = settings or Settings()
        self.devices = devices
        self.rejects = rejects if rejects is not None else Rejects()
        self.ingest = Ingest(devices, self.rejects)
        self.picker = Picker(self.s.picker)
        self.assoc = Associator(devices, self.s, id_prefix=id_prefix)
        self.step_s = step_s
        self.clock_s = -math.inf
        self._step_end = -math.inf
        self._pending: list = []
        self._step_open = False  # a first trigger was taken in this step: tick at its end
        self.n_packets = 0
        self.n_triggers = 0
        self.triggers: list[Trigger] = []  # first triggers (update 0), for reports
        #: a live service sets this: each step's new-event tries are left for
        #: :meth:`tick_new`, which it calls once it has published the step's updates
        self.split_ticks = False
        self._tries_at: float | None = None

    # input ----------------------------------------------------------------------------
    def feed(self, packet: Packet) -> list[EventUpdate]:
        """Take one raw packet (arrival order). Returns updates from completed steps."""
        out = self._advance(packet.arrival_time_s, packet.device_id)
        if out is None:
            return []
        ing = self.ingest.accept(packet)
        if ing is not None:
            self._pending.append(ing)
        return out

    def feed_trigger(self, trig: Trigger) -> list[EventUpdate]:
        """Take a trigger computed on a device (phones run the picker themselves), in
        arrival order (``issued_at_s`` is its arrival). Amplitude updates are stepped like
        packets; a first trigger (update 0) is associated at once, at its arrival, and an
        event it completes is announced then; its step still closes at its end."""
        out = self._advance(trig.issued_at_s, trig.device_id)
        if out is None:
            return []
        if trig.update == 0:
            # associated on arrival: an event it completes is announced at once; the
            # step's time-driven work (relocations of the events it joined) waits for
            # the step's end, so a thousand triggers do not cost a thousand steps
            self._step_open = True
            self.n_triggers += 1
            self.triggers.append(trig)
            out += self.tick_new()  # (split_ticks) the closed step's tries come first
            return out + self.assoc.add(trig, trig.issued_at_s)
        self._pending.append(trig)
        return out

    def feed_triggers(self, trigs: list[Trigger]) -> list[EventUpdate]:
        """Many device triggers in arrival order (what arrived within an engine step, or a
        bounded batch): the same updates as :meth:`feed_trigger` one by one. The first
        triggers between two step boundaries are associated together
        (:meth:`Associator.add_batch`: each still as of its own arrival), amplitude updates
        are stepped as before; a trigger behind the clock is rejected (``late_arrival``)
        and the rest of the batch goes on, as does the rest after a trigger whose
        association raises (counted as ``engine_error``)."""
        out: list[EventUpdate] = []
        seg: list[Trigger] = []
        errors: list = []

        def add_batch(seg):
            got = self.tick_new()  # (split_ticks) the closed step's tries come first
            got += self.assoc.add_batch(seg, errors)
            for trig, exc in errors:
                # one trigger's association failed (a bug): counted, the batch goes on
                self.rejects.add("engine_error", trig.device_id, f"association failed: {type(exc).__name__}: {exc}")
            errors.clear()
            return got
        for trig in trigs:
            t = trig.issued_at_s
            if t < self.clock_s:
                self.rejects.add(
                    "late_arrival",
                    trig.device_id,
                    f"arrival {t:.3f} is before the engine clock {self.clock_s:.3f}; feed messages in arrival order",
                )
                continue
            if t >= self._step_end and (self._pending or self._step_open):
                if seg:
                    out += add_batch(seg)
                    seg = []
                out += self._run_step(self._step_end)
            if not (self._pending or self._step_open):
                self._step_end = t + self.step_s
            self.clock_s = t
            if trig.update == 0:
                self._step_open = True
                self.n_triggers += 1
                self.triggers.append(trig)
                seg.append(trig)
            else:
                self._pending.append(trig)
        if seg:
            out += add_batch(seg)
        return out

    def _advance(self, t: float, device_id: str) -> list[EventUpdate] | None:
        """Move the clock to a message's arrival ``t``, closing the step it ends; None
        (and a counted rejection) when the message arrives behind the clock."""
        if t < self.clock_s:
            self.rejects.add(
                "late_arrival",
                device_id,
                f"arrival {t:.3f} is before the engine clock {self.clock_s:.3f}; feed messages in arrival order",
            )
            return None
        out: list[EventUpdate] = []
        if t >= self._step_end and (self._pending or self._step_open):
            out = self._run_step(self._step_end)
        if not (self._pending or self._step_open):
            self._step_end = t + self.step_s
        self.clock_s = t
        return out

    def feed_heartbeat(self, device_id: str, time_s: float, latitude: float | None = None, longitude: float | None = None) -> list[EventUpdate]:
        """A device that sends triggers rather than packets says it is alive and quiet at
        ``time_s``: its silence is then evidence against events near it. The position is
        its coarse cell's centre (or, for a known fixed device, left out)."""
        if latitude is None or longitude is None:
            dev = self.devices.get(device_id)
            if dev is None:
                return []
            latitude, longitude = dev.latitude, dev.longitude
        return self.feed_heartbeats([device_id], [latitude], [longitude], time_s)

    def feed_heartbeats(self, device_ids, latitudes, longitudes, time_s: float, ready=None, every_s=None) -> list[EventUpdate]:
        """Many heartbeats at once (a million phones check in every few minutes); ``ready``
        marks phones able to detect now (lying still): the others are alive, not witnesses.
        ``every_s``: each phone's declared heartbeat period, s (None: a minute)."""
        # a batch behind the clock closes the step no earlier than the clock: the step may
        # hold a first trigger that arrived after the batch's time
        close = max(self.clock_s, min(time_s, self._step_end))
        out = self._run_step(close) if (self._pending or self._step_open) else []
        out += self.tick_new()  # (split_ticks) before these phones' silence counts
        self.clock_s = max(self.clock_s, time_s)
        self.assoc.presence.note_heartbeats(device_ids, latitudes, longitudes, time_s, ready, every_s)
        return out + self._assoc_tick(self.clock_s)

    def add_device(self, device: Device) -> None:
        """A fixed sensor joined while running (live service): its packets are accepted
        from now on. Re-adding a known id moves it (a sensor re-installed elsewhere)."""
        self.devices[device.device_id] = device
        self.ingest.add_device(device)

    def tick(self, now_s: float) -> list[EventUpdate]:
        """A live server's timer: close the pending step if it is due by ``now_s`` (UNIX s,
        the server clock) and do the time-driven work (relocations, retractions, closing
        old events) as of then. A replay does not need this: the next message does it."""
        if now_s < self.clock_s:
            return []
        if (self._pending or self._step_open) and now_s >= self._step_end:
            out = self._run_step(self._step_end)  # ticks the associator as of the step's end
            self.clock_s = now_s
            return out
        self.clock_s = now_s
        return self._assoc_tick(now_s)

    def flush(self) -> list[EventUpdate]:
        """Process whatever is pending (end of a replay, or a live timer firing), as of
        the pending step's closing time."""
        return self._run_step(self._step_end) if (self._pending or self._step_open) else []

    def finish(self) -> list[EventUpdate]:
        """The input has ended (a replay's last record, a demo's last message): process
        what is pending and close every event with its final solution."""
        out = self.flush()
        out += self.tick_new()
        return out + self.assoc.close_all(self.clock_s)

    # one step -------------------------------------------------------------------------
    def _run_step(self, close_s: float) -> list[EventUpdate]:
        """Run the pending messages through the stages as of ``close_s`` (UNIX s), the
        moment the step is processed: no earlier than its newest message's arrival."""
        out: list[EventUpdate] = self.tick_new()  # (split_ticks) an earlier step's tries first
        pending, self._pending = self._pending, []
        self._step_open = False
        batch = [p for p in pending if not isinstance(p, Trigger)]
        device_triggers = [p for p in pending if isinstance(p, Trigger)]
        now = max([close_s] + [p.arrival_time_s for p in batch] + [t.issued_at_s for t in device_triggers])
        self.n_packets += len(batch)
        for p in batch:
            self.assoc.note_packet(p.device_id, p.end_time_s, p.reset)
        for trig in (self.picker.process(batch, now, self.devices) if batch else []) + device_triggers:
            if trig.update == 0:
                self.n_triggers += 1
                self.triggers.append(trig)
            out += self.assoc.add(trig, now)
        out += self._assoc_tick(now)
        return out

    def _assoc_tick(self, now_s: float) -> list[EventUpdate]:
        """The associator's time-driven work as of ``now_s``; with ``split_ticks``, the
        open events' part only (the tries wait for :meth:`tick_new`; tries an earlier step
        left are run first, so the order of the work is the same either way)."""
        if not self.split_ticks:
            return self.assoc.tick(now_s)
        out = self.tick_new()
        self._tries_at = now_s
        return out + self.assoc.tick_events(now_s)

    def tick_new(self) -> list[EventUpdate]:
        """(``split_ticks``) The new-event tries of the last step, as of its time: a live
        service calls this once it has published that step's updates, so an alert does not
        wait behind tries for other groups (tens of ms each, dozens a step in a burst)."""
        if self._tries_at is None:
            return []
        now, self._tries_at = self._tries_at, None
        return self.assoc.tick_new(now)
