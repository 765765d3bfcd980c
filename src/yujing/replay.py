"""Replay of recorded data through the engine, folder by folder.

Each event folder of the OpenEEW layout is an independent recording (hours or days apart),
so each gets a fresh :class:`~yujing.engine.Engine`; event ids come from the origin time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import msgspec

from .alerting import AlertPolicy, TierWarning, warning_times
from .engine import Engine
from .records import Alert, Device, EventUpdate, Trigger
from .rejects import Rejects
from .settings import Settings
from .sources.openeew import iter_packets


@dataclass
class FolderResult:
    folder: str
    updates: list[EventUpdate]
    triggers: list[Trigger]
    rejects: Rejects
    n_packets: int
    data_span_s: float
    compute_s: float
    first_arrival_s: float = float("nan")
    alerts: list[Alert] = field(default_factory=list)
    warnings: dict[str, list[TierWarning]] = field(default_factory=dict)  # event_id -> per tier


@dataclass
class ReplayResult:
    folders: list[FolderResult] = field(default_factory=list)

    @property
    def updates(self) -> list[tuple[str, EventUpdate]]:
        return [(f.folder, u) for f in self.folders for u in f.updates]


def iso(t_s: float) -> str:
    """UNIX seconds -> ISO 8601 UTC with milliseconds and a Z."""
    return datetime.fromtimestamp(t_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def update_to_json(u: EventUpdate, folder: str | None = None) -> dict:
    """The replay's JSON line for an update (times as ISO 8601 UTC)."""
    d = {
        "event_id": u.event_id,
        "version": u.version,
        "issued_at": iso(u.issued_at_s),
        "origin_time": iso(u.origin_time_s),
        "latitude": u.latitude,
        "longitude": u.longitude,
        "depth_km": u.depth_km,
        "magnitude": u.magnitude,
        "magnitude_sigma": u.magnitude_sigma,
        "n_devices": u.n_devices,
        "horizontal_error_km": u.horizontal_error_km,
        "retracted": u.retracted,
    }
    if folder is not None:
        d["folder"] = folder
    return d


def replay_folder(
    event_dir: Path,
    devices: dict[str, Device],
    settings: Settings | None = None,
    on_packet: Callable[[int], None] | None = None,
    on_update: Callable[[EventUpdate], None] | None = None,
    alerts: AlertPolicy | None = None,
) -> FolderResult:
    """Run one event folder through a fresh engine (and a fresh alert policy).

    ``alerts``: the alert policy to run on the updates (default: the standard one); the
    alert messages are timed like the updates that caused them (alerting takes no engine
    time; its own compute is counted in ``compute_s``)."""
    rejects = Rejects()
    folder = Path(event_dir).name
    eng = Engine(devices, settings, rejects)
    updates: list[EventUpdate] = []
    policy = alerts if alerts is not None else AlertPolicy()
    messages: list[Alert] = []
    t0 = time.perf_counter()
    first = last = None
    n = 0
    for pkt in iter_packets(event_dir, devices, rejects):
        if first is None:
            first = pkt.arrival_time_s
        last = pkt.arrival_time_s
        new = eng.feed(pkt)
        n += 1
        if new:
            updates.extend(new)
            for u in new:
                messages.extend(policy.on_update(u))
                if on_update:
                    on_update(u)
        if on_packet and n % 256 == 0:
            on_packet(256)
    tail = eng.finish()
    updates.extend(tail)
    for u in tail:
        messages.extend(policy.on_update(u))
        if on_update:
            on_update(u)
    compute_s = time.perf_counter() - t0
    final: dict[str, EventUpdate] = {}
    for u in updates:
        final[u.event_id] = u
    warnings = {eid: warning_times(policy, u) for eid, u in final.items() if not u.retracted}
    if on_packet:
        on_packet(n % 256)
    return FolderResult(
        folder=folder,
        updates=updates,
        triggers=eng.triggers,
        rejects=rejects,
        n_packets=n,
        data_span_s=(last - first) if first is not None else 0.0,
        compute_s=compute_s,
        first_arrival_s=first if first is not None else float("nan"),
        alerts=messages,
        warnings={k: v for k, v in warnings.items() if v},
    )


def replay(
    event_dirs: Iterable[Path],
    devices: dict[str, Device],
    settings: Settings | None = None,
    on_packet: Callable[[int], None] | None = None,
    on_update: Callable[[str, EventUpdate], None] | None = None,
    make_policy: Callable[[], AlertPolicy] | None = None,
) -> ReplayResult:
    """Replay folders one after the other; ``make_policy`` builds each folder's alert
    policy (default: the standard one from ``settings``)."""
    res = ReplayResult()
    s = settings or Settings()
    for d in event_dirs:
        cb = (lambda u, _f=Path(d).name: on_update(_f, u)) if on_update else None
        policy = make_policy() if make_policy else AlertPolicy(s.alert)
        res.folders.append(replay_folder(Path(d), devices, s, on_packet, cb, policy))
    return res


def write_alerts(path: Path, result: ReplayResult) -> None:
    """One JSON object per alert message, in the order issued."""
    from .alerting import alert_to_json

    enc = msgspec.json.Encoder()
    with open(path, "wb") as fh:
        for f in result.folders:
            for a in f.alerts:
                fh.write(enc.encode(alert_to_json(a)) + b"\n")


def write_cap(folder: Path, result: ReplayResult) -> list[Path]:
    """One CAP 1.2 file per alert message; updates and cancels reference the earlier ones."""
    from .formats.cap import alert_to_cap, cap_filename

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for f in result.folders:
        sent: dict[str, list[Alert]] = {}
        for a in f.alerts:
            prev = sent.setdefault(a.alert_id, [])
            path = folder / cap_filename(a)
            path.write_bytes(alert_to_cap(a, previous=tuple(prev)))
            prev.append(a)
            written.append(path)
    return written


def write_quakeml(path: Path, result: ReplayResult) -> None:
    """Every event of the replay, all versions as origins, as QuakeML 1.2."""
    from .formats.quakeml import events_to_quakeml

    Path(path).write_bytes(events_to_quakeml([u for f in result.folders for u in f.updates]))


def write_geojson(folder: Path, result: ReplayResult, policy_factory=None) -> list[Path]:
    """``events.geojson`` (USGS feed shape) and, per event, ``mmi_<event_id>.geojson``:
    the forecast intensity of its final update over the cells that reach MMI 3, binned
    by half an intensity unit (ShakeMap's polygon style)."""
    import json

    from .formats.geojson import events_to_geojson, mmi_to_geojson

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    updates = [u for f in result.folders for u in f.updates]
    out = [folder / "events.geojson"]
    out[0].write_text(json.dumps(events_to_geojson(updates)))
    final: dict[str, EventUpdate] = {}
    for u in updates:
        final[u.event_id] = u
    policy = policy_factory() if policy_factory else AlertPolicy()
    for eid, u in final.items():
        if u.retracted:
            continue
        tm = policy.tier_map(u)
        if len(tm.cells_int) == 0:
            continue
        p = folder / f"mmi_{eid}.geojson"
        p.write_text(json.dumps(mmi_to_geojson(list(tm.cells), tm.mmi, bin_width=0.5)))
        out.append(p)
    return out


def write_updates(path: Path, result: ReplayResult) -> None:
    enc = msgspec.json.Encoder()
    with open(path, "wb") as fh:
        for folder, u in result.updates:
            fh.write(enc.encode(update_to_json(u, folder)) + b"\n")
