"""Replay a quake into a running service, as its devices would send it, now.

The dashboard's replay control (``POST /api/replay``) and ``yujing serve --replay`` use
:class:`LiveReplay`: a simulated scenario (phones' triggers and heartbeats) or a recorded
OpenEEW event (fixed sensors' raw packets) is shifted in time so that it happens now, and
its messages are published at their arrival times over the same path real devices use
(the MQTT broker when the service has one), so the whole chain is exercised: protocol,
broker, engine, alert policy, alerts back out to devices.

The service's clock is the wall clock, so a replay runs in real time: a scenario's first
alert comes ~5 s after its origin; a recording is started ``warmup_s`` before its origin
so the picker's long-term average has noise to learn from.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Callable

from . import scenarios
from .replay import iso
from .sources.wire_feed import Send, openeew_wire, play, scenario_wire

MAX_PHONES = 200_000


class LiveReplay:
    """One replay at a time. ``send(topic, payload)`` publishes a device message;
    ``data_dir`` holds OpenEEW recordings (``devices.json``, ``events/``, ``catalog.csv``)."""

    def __init__(self, send: Send, clock: Callable[[], float] = time.time, data_dir: str | Path | None = None,
                 warmup_s: float = 40.0, signer=None):
        self.send = send
        # signs the replayed devices' messages: the serving engine's own issuer (a server
        # that keeps its credentials in a file has another master than this process's
        # default, and would refuse the replay as unknown_credential); one signer for
        # every replay, so that a scenario replayed twice goes on numbering its messages
        self.signer = signer
        self.clock = clock
        self.data_dir = Path(data_dir) if data_dir else None
        self.warmup_s = warmup_s
        self.task: asyncio.Task | None = None
        self._starting = False
        self.info: dict = {}
        self.sent = 0

    def state(self) -> dict:
        running = self.task is not None and not self.task.done()
        return {**self.info, "running": running, "sent": self.sent}

    def sources(self) -> dict:
        out = {"scenario": sorted(scenarios.SCENARIOS)}
        if self.data_dir is not None and (self.data_dir / "events").is_dir():
            out["openeew"] = sorted(p.name for p in (self.data_dir / "events").iterdir() if p.is_dir())
        return out

    async def start(self, source: str, scenario: str = "luding2022", phones: int = 20_000, seed: int = 0,
                    event: str = "", lead_s: float = 2.0) -> dict:
        """Prepare the messages (in a worker thread) and start sending; returns what
        will happen: the origin time on the service's clock and the message count."""
        if self._starting or (self.task is not None and not self.task.done()):
            raise RuntimeError("a replay is already running; wait for it to end (GET /api/replay)")
        if not 0.0 <= lead_s <= 60.0:
            raise ValueError(f"lead_s {lead_s} must be within 0-60 s")
        self._starting = True  # held across the preparation's await: one replay at a time
        try:
            return await self._start(source, scenario, phones, seed, event, lead_s)
        finally:
            self._starting = False

    async def _start(self, source, scenario, phones, seed, event, lead_s) -> dict:
        if source == "scenario":
            if scenario not in scenarios.SCENARIOS:
                raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(sorted(scenarios.SCENARIOS))}")
            if not 100 <= phones <= MAX_PHONES:
                raise ValueError(f"phones {phones} must be within 100-{MAX_PHONES:,}")
            msgs, origin, name = await asyncio.to_thread(self._scenario, scenario, phones, seed, lead_s)
        elif source == "openeew":
            msgs, origin, name = await asyncio.to_thread(self._openeew, event, lead_s)
        else:
            raise ValueError(f"unknown replay source {source!r}; 'scenario' or 'openeew'")
        self.sent = 0
        start = msgs[0][0] if msgs else self.clock()
        self.info = {"source": source, "name": name, "messages": len(msgs), "origin_time": iso(origin),
                     "origin_time_s": origin, "starts": iso(start), "ends": iso(msgs[-1][0]) if msgs else iso(start)}
        self.task = asyncio.get_running_loop().create_task(self._run(msgs), name=f"replay {name}")
        return self.state()

    async def _run(self, msgs) -> None:
        def counted():
            for m in msgs:
                self.sent += 1
                yield m

        await play(counted(), self.send, self.clock)

    def _scenario(self, key: str, phones: int, seed: int, lead_s: float):
        from .sources.simulator import simulate

        sc = scenarios.get(key)
        net = simulate(sc, phones, seed=seed)
        now = self.clock()
        origin = now + lead_s
        # the replay starts now: what arrived before is history. Heartbeats of the minute
        # before are sent at once (they say who is online); triggers from before are not
        # (sent late, they would be news about the past)
        msgs = [m for m in scenario_wire(net, time_shift_s=origin - sc.origin_time_s, signer=self.signer)
                if m[0] >= now or "/hb/" in m[1]]
        return msgs, origin, f"{sc.name} ({phones:,} simulated phones)"

    def _openeew(self, event: str, lead_s: float):
        import csv
        from datetime import datetime

        from .sources.openeew import load_devices

        if self.data_dir is None:
            raise ValueError("no recordings: start the server with --data DIR (OpenEEW layout)")
        folder = self.data_dir / "events" / event
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", event or "") or not folder.is_dir():
            raise ValueError(f"no recording {event!r} under {self.data_dir / 'events'}")
        origin_rec = None
        cat = self.data_dir / "catalog.csv"
        if cat.exists():
            with open(cat, newline="") as f:
                for row in csv.DictReader(f):
                    if row.get("event") == event:
                        origin_rec = datetime.fromisoformat(row["origin_time"].replace("Z", "+00:00")).timestamp()
        devices = load_devices(self.data_dir / "devices.json")
        start_rec = None if origin_rec is None else origin_rec - self.warmup_s
        first = next(iter(openeew_wire(folder, devices, 0.0, start_rec, signer=False)), None)
        if first is None:
            raise ValueError(f"recording {event!r} holds no packets")
        shift = self.clock() + lead_s - first[0]
        msgs = list(openeew_wire(folder, devices, shift, start_rec, signer=self.signer))
        origin = (origin_rec + shift) if origin_rec is not None else float("nan")
        return msgs, origin, f"OpenEEW {event}"
