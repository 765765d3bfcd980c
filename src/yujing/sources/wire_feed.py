"""A simulated network's traffic as the device protocol's bytes on the wire.

:func:`scenario_wire` turns what :mod:`yujing.sources.simulator` says reaches the server
into ``(arrival_s, topic, payload)`` tuples, in arrival order, exactly as phones would
publish them over MQTT (:mod:`yujing.protocol`): the replay control of ``yujing serve`` and
the load generator send these, and tests feed them to :meth:`yujing.service.Service.receive`.

Every message is signed (:mod:`yujing.security`) with a credential of ``signer``'s issuer,
by default this process's own (:func:`yujing.security.local_issuer`), which every
:class:`~yujing.service.Service` of the process trusts: a replay started by the server's
operator needs no enrolment round trip per simulated phone, and a service in another
process refuses the messages (``unknown_credential``), as it should. The default signer is
shared by the process's feeds (:func:`shared_signer`). ``signer=False`` sends them unsigned (for a development server that allows it).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import h3
import msgspec

from .. import protocol
from ..security import Signer
from ..device.features import AGENT_DECISION_LAG_S
from ..records import Device, Trigger
from ..rejects import Rejects
from .simulator import Heartbeat, SimulatedNetwork


def _wire_of(signer: Signer | None | bool):
    """``(kind, msg) -> (topic, payload)``: signed by ``signer`` (None: a new one of this
    process's issuer), or unsigned and numbered here (False)."""
    if signer is False:
        seq: dict[str, int] = {}

        def plain(kind, msg):
            n = seq[msg.device] = seq.get(msg.device, 0) + 1
            return protocol.topic_for(kind, msg.cell), protocol.encode(msgspec.structs.replace(msg, seq=n))

        return plain
    return (signer or shared_signer()).wire


_SHARED: Signer | None = None


def shared_signer() -> Signer:
    """The signer feeds use by default: one per process, so that a scenario replayed twice
    into the same service (the same simulated pseudonyms) goes on numbering each phone's
    messages instead of repeating ``seq``s the service refuses as replays. Bounded: beyond
    a million phones it starts again (a replay of those into a service that saw them may
    then be refused, counted as ``replayed``)."""
    global _SHARED
    if _SHARED is None or len(_SHARED.seq) > 1_000_000:
        _SHARED = Signer()
    return _SHARED


def scenario_wire(net: SimulatedNetwork, heartbeats: bool = True, time_shift_s: float = 0.0,
                  signer: Signer | None | bool = None) -> Iterator[tuple[float, str, bytes]]:
    """Every trigger (and heartbeat) message of ``net`` as wire bytes, arrival order.
    ``time_shift_s`` is added to every time (arrival and device clocks): a recorded or
    simulated quake replayed into a live service happens now. ``signer``: see the module
    docstring."""
    wire = _wire_of(signer)
    cells: dict[tuple[float, float], str] = {}
    dt = time_shift_s
    # the phones' declared period, within what the protocol allows (a simulator setting
    # may lie outside it)
    lo, hi = protocol.HEARTBEAT_EVERY_RANGE_S
    every = min(max(float(net.settings.heartbeat_interval_s), lo), hi)
    for m in net.messages(heartbeats="each" if heartbeats else "none"):
        if isinstance(m, Heartbeat):
            msg = protocol.HeartbeatMsg(device=m.device_id, cell=m.cell, sent_s=m.time_s + dt, ready=bool(m.ready), every_s=every)
            yield (m.arrival_time_s + dt, *wire("hb", msg))
            continue
        assert isinstance(m, Trigger)
        key = (m.latitude, m.longitude)
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = h3.latlng_to_cell(m.latitude, m.longitude, protocol.DEVICE_CELL_RES)
        # the device sends when its window has passed, on its own clock
        sent = m.onset_time_s + m.window_s + AGENT_DECISION_LAG_S
        shifted = msgspec.structs.replace(m, onset_time_s=m.onset_time_s + dt)
        msg = protocol.from_trigger(shifted, cell, sent + dt)
        yield (m.issued_at_s + dt, *wire("trig", msg))



def openeew_wire(
    event_dir: str | Path,
    devices: dict[str, Device],
    time_shift_s: float = 0.0,
    start_s: float | None = None,
    rejects: Rejects | None = None,
    signer: Signer | None | bool = None,
) -> Iterator[tuple[float, str, bytes]]:
    """A recorded OpenEEW event folder as fixed sensors would send it: a hello (kind
    ``sensor``, the device's resolution-7 cell) before each device's first packet, then
    its packets, in arrival order. Packets arriving before ``start_s`` (recording time)
    are skipped. Times are shifted by ``time_shift_s``. ``signer`` as for
    :func:`scenario_wire`."""
    from .openeew import iter_packets

    rejects = rejects if rejects is not None else Rejects()
    said: set[str] = set()
    wire = _wire_of(signer)
    dt = time_shift_s
    for p in iter_packets(event_dir, devices, rejects):
        if start_s is not None and p.arrival_time_s < start_s:
            continue
        d = devices[p.device_id]
        cell = h3.latlng_to_cell(d.latitude, d.longitude, protocol.DEVICE_CELL_RES)
        if p.device_id not in said:
            said.add(p.device_id)
            hello = protocol.HelloMsg(device=p.device_id, cell=cell, sent_s=p.device_time_s + dt, kind="sensor",
                                      sample_rate_hz=p.sample_rate_hz, app="openeew-replay")
            yield (p.arrival_time_s + dt, *wire("hello", hello))
        msg = protocol.PacketMsg(device=p.device_id, cell=cell, device_time_s=p.device_time_s + dt,
                                 sample_rate_hz=p.sample_rate_hz, x_gal=p.x_gal, y_gal=p.y_gal, z_gal=p.z_gal)
        yield (p.arrival_time_s + dt, *wire("pkt", msg))


Send = Callable[[str, bytes], Awaitable[None] | None]


async def play(
    messages, send: Send, clock: Callable[[], float] = time.time, sleep=asyncio.sleep, max_late_s: float = 0.005
) -> int:
    """Send ``(arrival_s, topic, payload)`` messages when ``clock()`` reaches each arrival
    time (real time), in order; returns how many were sent. ``send`` may be sync or async
    (an MQTT publish). Messages due together go out together, without a sleep between."""
    is_async = inspect.iscoroutinefunction(send)
    n = 0
    for arr, topic, payload in messages:
        wait = arr - clock()
        if wait > max_late_s:
            await sleep(wait)
        r = send(topic, payload)
        if is_async:
            await r
        n += 1
        if n % 1000 == 0:
            await asyncio.sleep(0)
    return n
