"""``yujing device replay``: the device agent run offline on one recording (the CLI part).

Reads an OpenEEW device folder or a t,x,y,z CSV file, feeds the agent, and writes a JSON
line per trigger it would send; a summary goes to stderr. All file I/O of the agent lives
here. Units: times UNIX s, accelerations as the input says (converted by the agent).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from ..ingest import TRUSTED_OFFSET_S
from ..records import Device, Packet, Trigger
from ..rejects import Rejects
from .config import AgentConfig
from .features import EARLY_WINDOW_POST_S, WINDOW_POST_S
from .messages import CELL_RESOLUTION, TriggerMessage, utc_day

if TYPE_CHECKING:
    from .agent import DeviceAgent


def read_openeew_device(folder: Path, devices: dict[str, Device], rejects: Rejects) -> tuple[list[Packet], float]:
    """The packets of one OpenEEW device folder (``<device_id>/*.jsonl``) in device-time
    order, and the clock correction applied (s).

    Repeated device times are dropped (``duplicate``). The agent assumes an NTP clock; a
    recorded clock far off it (median ``cloud_t - device_t`` outside the engine's trusted
    band, :data:`yujing.ingest.TRUSTED_OFFSET_S`) is put on the arrival clock by that
    median, as the classifier's training did.
    """
    from ..sources import openeew

    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl files in {folder}")
    streams = [openeew._file_stream(f, i, folder.name, devices, rejects) for i, f in enumerate(files)]
    packets = sorted((item[3] for item in heapq.merge(*streams)), key=lambda p: p.device_time_s)
    out: list[Packet] = []
    for p in packets:
        if out and p.device_time_s == out[-1].device_time_s:
            rejects.add("duplicate", folder.name, f"device_t {p.device_time_s:.3f} repeated")
            continue
        out.append(p)
    if not out:
        return out, 0.0
    offset = float(np.median([p.arrival_time_s - p.device_time_s for p in out]))
    lo, hi = TRUSTED_OFFSET_S
    if lo <= offset <= hi:
        return out, 0.0
    rejects.note("clock_corrected", folder.name, f"device clock {offset:+.1f} s off the arrival clock; corrected")
    return [msgspec.structs.replace(p, device_time_s=p.device_time_s + offset) for p in out], offset


def _replay_secret(name: str) -> bytes:
    """A replay's stand-in for a device secret, fixed by the input's name so that a replay
    is repeatable. A real device makes a random one (:meth:`DeviceAgent.new_secret`)."""
    return hashlib.sha256(b"yujing-replay-secret:" + name.encode()).digest()[:16]


def device_replay(args) -> int:
    """``yujing device replay``: run the agent on one device's recording, write a JSON line
    per trigger it would send (``--all``: every trigger, with the reason for the ones it
    would not), print a summary on stderr. Exit 0, or 2 for unusable input."""
    import json

    from ..replay import iso
    from ..sources.accel_csv import CsvInfo, iter_accel_csv

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    src = Path(args.input)
    if (args.lat is None) != (args.lon is None):
        return fail("give both --lat and --lon, or neither")
    rejects = Rejects()
    try:
        secret = bytes.fromhex(args.secret) if args.secret else _replay_secret(src.resolve().name)
    except ValueError:
        return fail("--secret must be hexadecimal (32 hex digits or more)")
    lines: list[str] = []
    if src.is_dir():
        if args.lat is None:
            table = src.resolve().parents[2] / "devices.json" if len(src.resolve().parents) > 2 else None
            if table is None or not table.is_file():
                return fail(f"no devices.json at {table} (the OpenEEW layout DATA/events/<event>/<device>/); pass --lat and --lon")
            from ..sources.openeew import load_devices

            try:
                devices = load_devices(table)
            except (OSError, ValueError) as exc:
                return fail(str(exc))
            if src.resolve().name not in devices:
                return fail(f"device {src.resolve().name!r} is not in {table}; pass --lat and --lon")
            dev = devices[src.resolve().name]
            lat, lon = dev.latitude, dev.longitude
        else:
            lat, lon = args.lat, args.lon
        devices = {src.resolve().name: Device(src.resolve().name, lat, lon)}
        try:
            packets, correction = read_openeew_device(src, devices, rejects)
            agent = _make_agent(args, lat, lon, secret, units="gal")
        except (FileNotFoundError, ValueError) as exc:
            return fail(str(exc))
        for p in packets:
            agent.feed_packet(p)
        agent.flush()
        lines.append(f"input: OpenEEW device folder {src} ({len(packets):,} packets"
                     + (f", clock corrected by {correction:+.1f} s)" if correction else ")"))
    elif src.is_file():
        if args.lat is None:
            return fail("a CSV recording needs the device's position: pass --lat and --lon (degrees)")
        info = CsvInfo(str(src))
        try:
            agent = _make_agent(args, args.lat, args.lon, secret, units=args.units)
            start = None
            for chunk in iter_accel_csv(src, rejects, info):
                if start is None:
                    start = _clock_start(info, args.start_time)
                x = chunk.xyz
                agent.feed(chunk.t_s + start, x[:, 0], x[:, 1], x[:, 2])
            agent.flush()
        except (FileNotFoundError, ValueError) as exc:
            return fail(str(exc))
        clock = "UNIX time" if info.absolute else f"relative clock, t=0 at {iso(start)}"
        lines.append(f"input: CSV {src} ({info.samples:,} good lines, t in {info.time_unit}, {clock})")
    else:
        return fail(f"{src} does not exist (give an OpenEEW device folder or a t,x,y,z CSV file)")

    keep = [d for d in agent.decisions if d.sent or args.all]
    last: dict[float, TriggerMessage] = {}
    count: dict[float, int] = {}
    rows: list[dict] = []
    for m in agent.outbox:
        if isinstance(m, TriggerMessage):
            last[m.trigger.onset_time_s] = m
            count[m.trigger.onset_time_s] = count.get(m.trigger.onset_time_s, 0) + 1
            if args.updates:
                rows.append(_trigger_json(m.trigger, m.cell, m.classifier_probability, True, "", 1))
    if not args.updates:
        for d in keep:
            m = last.get(d.onset_time_s)
            trig = m.trigger if d.sent and m is not None else d.trigger
            rows.append(_trigger_json(trig, agent.cell, d.probability, d.sent, d.reason, count.get(d.onset_time_s, 0), d.window_s))
    elif args.all:
        rows += [_trigger_json(d.trigger, agent.cell, d.probability, False, d.reason, 0) for d in keep if not d.sent]
        rows.sort(key=lambda r: (r["onset_time_s"], r["issued_at_s"]))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    _print_summary(agent, rejects, lines, args, len(rows))
    return 0


def _make_agent(args, lat: float, lon: float, secret: bytes, units: str) -> DeviceAgent:
    from .agent import DeviceAgent  # the agent re-exports this module's functions

    cfg = AgentConfig(
        latitude=lat,
        longitude=lon,
        secret=secret,
        units=units,
        vertical=args.vertical,
        sample_rate_hz=args.rate,
        share_raw=False,
        keep_decisions=True,
    )
    return DeviceAgent(cfg)


def _clock_start(info, start_time: str | None) -> float:
    """Seconds to add to a CSV's ``t``: 0 for UNIX time, else the ``--start-time``."""
    if info.absolute:
        if start_time:
            raise ValueError(f"{info.path}: t is already UNIX time; --start-time is for relative clocks")
        return 0.0
    if not start_time:
        print(
            f"warning: {info.path}: t is a relative clock; onset times count from 1970-01-01 "
            "(give --start-time, the UTC time of t=0)",
            file=sys.stderr,
        )
        return 0.0
    try:
        t0 = datetime.fromisoformat(start_time.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--start-time {start_time!r} is not an ISO 8601 time") from None
    if t0.tzinfo is None:
        t0 = t0.replace(tzinfo=timezone.utc)
    return t0.timestamp()


def _trigger_json(trig: Trigger, cell: str, p: float, sent: bool, reason: str, messages: int, window_s: float = math.nan) -> dict:
    from ..replay import iso

    d = {"onset_time": iso(trig.onset_time_s), "issued_at": iso(trig.issued_at_s)}
    d.update(msgspec.structs.asdict(trig))
    d.update(
        cell=cell,
        classifier_probability=None if math.isnan(p) else round(p, 4),
        sent=sent,
        messages=messages,
    )
    if not math.isnan(window_s):
        d["decision_window_s"] = window_s  # seconds after the onset the deciding window reached
    if not sent:
        d["reason"] = reason
    return d


def _print_summary(agent: DeviceAgent, rejects: Rejects, lines: list[str], args, n_rows: int) -> None:
    st = agent.stats
    err = sys.stderr
    for line in lines:
        print(line, file=err)
    span = st.last_time_s - st.first_time_s if st.samples_processed else 0.0
    measured = f"median input rate {st.input_rate_hz:.2f} Hz, " if math.isfinite(st.input_rate_hz) else ""
    orient = {"gravity": "vertical = running gravity direction", "x": "x axis vertical (no gravity in the data)"}.get(
        st.orientation, f"{st.orientation} axis vertical"
    )
    print(
        f"samples: {st.samples_in:,} in {span:.1f} s; {measured}processed at {st.rate_hz:g} Hz; "
        f"{orient}; {st.streams} stream start(s)",
        file=err,
    )
    if st.samples_processed and span < agent.config.picker.warmup_s + WINDOW_POST_S:
        print(f"warning: {span:.1f} s of data is too short for a trigger (warm-up {agent.config.picker.warmup_s:g} s)", file=err)
    if math.isfinite(st.rate_hz) and st.rate_hz < 20.0:
        print("warning: below 20 Hz the classifier works outside the rates it was trained for", file=err)
    if math.isfinite(st.first_time_s):
        print(f"cell {agent.cell} (H3 res {CELL_RESOLUTION}); pseudonym {agent.pseudonym(st.first_time_s)} on {utc_day(st.first_time_s)}", file=err)
    print(
        f"triggers: {st.triggers} found, {st.sent} sent ({st.sent_early} early, at {EARLY_WINDOW_POST_S:g} s), "
        f"{st.rejected_moving} dropped as moving, "
        f"{st.rejected_turned} as turned, {st.rejected_strong} as too strong, "
        f"{st.rejected_classifier} rejected by the classifier "
        f"(threshold {agent.classifier.threshold:.3f}"
        + (f"; early model {agent.early_classifier.threshold:.6f}" if agent.early_classifier is not None else "")
        + f"), {st.rejected_incomplete} incomplete; "
        f"{st.trigger_messages} messages with updates",
        file=err,
    )
    for src in (rejects, agent.rejects):
        if src.total or src.notes:
            for line in src.summary_lines():
                print(line, file=err)
    if not (rejects.total or agent.rejects.total):
        print("skipped input: none", file=err)
    if args.output:
        print(f"wrote {n_rows} line(s) to {args.output}", file=err)
