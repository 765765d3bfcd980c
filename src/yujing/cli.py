"""The ``yujing`` command line."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from . import __version__


def _load_settings(args, command: str):
    """The settings of ``--settings FILE`` (defaults without it); prints the error and
    returns None when the file is wrong."""
    from .settings import Settings, load_settings

    if not getattr(args, "settings", None):
        return Settings()
    try:
        return load_settings(args.settings)
    except ValueError as exc:
        print(f"yujing {command}: {exc}", file=sys.stderr)
        return None


def _replay(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .replay import iso, replay, write_alerts, write_cap, write_geojson, write_quakeml, write_updates
    from .sources.openeew import iter_event_dirs, load_devices

    console = Console(stderr=True)
    settings = _load_settings(args, "replay")
    if settings is None:
        return 2
    data = Path(args.data_dir)
    try:
        devices = load_devices(data / "devices.json")
        dirs = list(iter_event_dirs(data))
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}\nDATA_DIR must hold devices.json and events/<event>/<device>/*.jsonl")
        return 2
    if args.event:
        wanted = set(args.event)
        missing = wanted - {d.name for d in dirs}
        if missing:
            console.print(f"[red]error:[/red] no event folder named {', '.join(sorted(missing))} under {data / 'events'}")
            return 2
        dirs = [d for d in dirs if d.name in wanted]
    from .alerting import AlertPolicy

    grid = None
    if args.vs30:
        from .sitegrid import Vs30Grid

        try:
            grid = Vs30Grid.from_csv(args.vs30)
        except (OSError, ValueError) as exc:
            console.print(f"error: {exc}", markup=False)
            return 2
    model = None if args.model == "auto" else args.model

    def make_policy():
        return AlertPolicy(settings.alert, model=model, vs30_grid=grid)

    # progress in packets, estimated from file sizes (about 1 kB a packet at 31.25 Hz)
    sizes = sum(f.stat().st_size for d in dirs for f in d.glob("*/*.jsonl"))
    est_packets = max(1, sizes // 800)
    with Progress(
        TextColumn("[bold]replay[/bold]"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} packets"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=args.quiet,
    ) as prog:
        task = prog.add_task("replay", total=est_packets)
        result = replay(dirs, devices, settings, on_packet=lambda n: prog.advance(task, n), make_policy=make_policy)
    if args.output:
        write_updates(Path(args.output), result)
    if args.alerts:
        write_alerts(Path(args.alerts), result)
    cap_files = write_cap(Path(args.cap_dir), result) if args.cap_dir else []
    if args.quakeml:
        write_quakeml(Path(args.quakeml), result)
    geo_files = write_geojson(Path(args.geojson), result, make_policy) if args.geojson else []

    # Text from the data (device ids, paths) is printed without markup; when stdout is not a
    # terminal (pipes, CI logs) the table gets room instead of rich's 80 columns.
    out = Console(markup=False, highlight=False, width=None if sys.stdout.isatty() else 200)
    table = Table(title="yujing replay", show_lines=False)
    for col in ("folder", "packets", "data", "compute", "triggers", "events", "first (after origin)", "final M", "epicentre", "devices", "versions", "skipped"):
        left = col in ("folder", "events", "first (after origin)", "epicentre")
        table.add_column(col, justify="left" if left else "right", no_wrap=col in ("folder", "events"))
    for f in result.folders:
        by_event: dict[str, list] = {}
        for u in f.updates:
            by_event.setdefault(u.event_id, []).append(u)
        skipped = f.rejects.total
        if not by_event:
            table.add_row(f.folder, f"{f.n_packets:,}", f"{f.data_span_s:.0f} s", f"{f.compute_s:.2f} s", str(len(f.triggers)), "0", "-", "-", "-", "-", "-", str(skipped))
        for i, (eid, us) in enumerate(by_event.items()):
            first, final = us[0], us[-1]
            state = " (retracted)" if final.retracted else ""
            table.add_row(
                f.folder if i == 0 else "",
                f"{f.n_packets:,}" if i == 0 else "",
                f"{f.data_span_s:.0f} s" if i == 0 else "",
                f"{f.compute_s:.2f} s" if i == 0 else "",
                str(len(f.triggers)) if i == 0 else "",
                eid + state,
                f"{iso(first.issued_at_s)[11:21]} +{first.issued_at_s - first.origin_time_s:.1f}s",
                f"{final.magnitude:.1f} ± {final.magnitude_sigma:.1f}",
                f"{final.latitude:.2f} {final.longitude:.2f} {final.depth_km:.0f}km",
                str(final.n_devices),
                str(final.version),
                str(skipped) if i == 0 else "",
            )
    out.print(table)
    total_packets = sum(f.n_packets for f in result.folders)
    span = sum(f.data_span_s for f in result.folders)
    compute = sum(f.compute_s for f in result.folders)
    out.print(f"{total_packets:,} packets, {span / 60:.1f} min of data in {compute:.1f} s ({span / max(compute, 1e-9):.0f}x real time)")
    # what was skipped, and why
    reasons: dict[str, int] = {}
    notes: dict[str, int] = {}
    for f in result.folders:
        for k, v in f.rejects.by_reason().items():
            reasons[k] = reasons.get(k, 0) + v
        for k, v in f.rejects.notes.items():
            notes[k] = notes.get(k, 0) + v
    if reasons:
        out.print("skipped input: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
        for f in result.folders:
            for reason, n in f.rejects.by_reason().items():
                out.print(f"  {f.folder}: {reason} {n}")
                for msg in f.rejects.messages(reason)[:2]:
                    out.print(f"    {msg}")
                if n > 2:
                    out.print(f"    ... and {n - 2} more")
    else:
        out.print("skipped input: none")
    if notes:
        out.print("noted (kept): " + ", ".join(f"{k} {v}" for k, v in sorted(notes.items())))
    if args.output:
        out.print(f"updates written to {args.output}")
    _print_alerts(out, result)
    if any(f.alerts for f in result.folders):
        from .wire import encode_alert

        sizes = [len(encode_alert(a)) for f in result.folders for a in f.alerts]
        out.print(f"alert messages for devices (msgpack): largest {max(sizes):,} bytes")
    if args.alerts:
        out.print(f"alert messages written to {args.alerts}")
    if args.quakeml:
        out.print(f"events written to {args.quakeml} (QuakeML 1.2)")
    if args.geojson:
        out.print(f"{len(geo_files)} GeoJSON files written to {args.geojson} (events and MMI maps)")
    if args.cap_dir:
        biggest = max((p.stat().st_size for p in cap_files), default=0)
        out.print(f"{len(cap_files)} CAP 1.2 files written to {args.cap_dir} (largest {biggest:,} bytes)")

    catalog = data / "catalog.csv"
    if not args.no_score and catalog.exists():
        _print_score(out, data, result, devices)
    return 0


def _print_alerts(out, result) -> None:
    """Alert messages and warning time per tier (S arrivals from each event's final
    location: the engine's own estimate, no catalogue needed)."""
    from rich.table import Table

    n = sum(len(f.alerts) for f in result.folders)
    if n == 0:
        out.print("alerts: none (no event reached M4.5 with a forecast of MMI 3 or more)")
        return
    t = Table(title=f"alerts: {n} messages; warning time = S arrival - first alert covering the cell")
    for col in ("folder", "event", "messages", "tier", "cells", "warning median", "min .. max", "late cells"):
        t.add_column(col, justify="left" if col in ("folder", "event", "tier") else "right", no_wrap=col == "event")
    for f in result.folders:
        per_event: dict[str, int] = {}
        for a in f.alerts:
            per_event[a.event_id] = per_event.get(a.event_id, 0) + 1
        for eid, tiers in f.warnings.items():
            for i, tw in enumerate(tiers):
                t.add_row(
                    f.folder if i == 0 else "",
                    eid if i == 0 else "",
                    str(per_event.get(eid, 0)) if i == 0 else "",
                    tw.tier,
                    f"{tw.n_cells:,}",
                    f"{tw.median_s:.1f} s",
                    f"{tw.min_s:.1f} .. {tw.max_s:.1f} s",
                    f"{tw.n_late:,}",
                )
    out.print(t)


def _print_score(out, data: Path, result, devices) -> None:
    from rich.table import Table

    from .score import false_events, load_catalog, score_folder, summarise

    truth = {c.key: c for c in load_catalog(data / "catalog.csv")}
    full = data / "ssn_catalog.csv"
    full_cat = load_catalog(full) if full.exists() else list(truth.values())
    scores = []
    n_false = 0
    t = Table(title="score against catalog.csv (detection did not read it)")
    for col in ("folder", "M", "detected", "first after origin", "after P at 3rd device", "epicentre error first/final", "M error first/final"):
        t.add_column(col)
    for f in result.folders:
        fa = false_events(f.updates, full_cat)
        n_false += len(fa)
        c = truth.get(f.folder)
        if c is None:
            continue
        recorded = [devices[p.name] for p in (data / "events" / f.folder).iterdir() if p.is_dir() and p.name in devices]
        s = score_folder(f.folder, f.updates, c, recorded)
        scores.append(s)

        def fmt(v, unit=""):
            return "-" if math.isnan(v) else f"{v:+.1f}{unit}" if unit == " s" else f"{v:.0f}{unit}"

        t.add_row(
            f.folder,
            f"{c.magnitude:.1f}",
            "yes" if s.detected else "MISSED",
            fmt(s.first_delay_origin_s, " s"),
            fmt(s.first_delay_p3_s, " s"),
            f"{fmt(s.first_location_error_km)} / {fmt(s.final_location_error_km)} km",
            "-" if not s.detected else f"{s.first_magnitude_error:+.2f} / {s.final_magnitude_error:+.2f}",
        )
    out.print(t)
    _print_pga(out, data, result, devices)
    sm = summarise(scores, n_false)
    out.print(
        f"detected {sm.n_detected}/{sm.n_events}, false events {sm.n_false}; medians: first update "
        f"{sm.median_first_delay_p3_s:+.2f} s after P at 3rd device, final epicentre error "
        f"{sm.median_final_location_error_km:.1f} km, |M error| first {sm.median_first_magnitude_error:.2f} "
        f"final {sm.median_final_magnitude_error:.2f}"
    )


def _print_pga(out, data: Path, result, devices) -> None:
    """Predicted against recorded PGA, each event at its final location and magnitude."""
    import numpy as np

    from .score import pga_residuals

    by_model: dict[str, list[float]] = {}
    for f in result.folders:
        final: dict[str, object] = {}
        for u in f.updates:
            final[u.event_id] = u
        for u in final.values():
            if u.retracted:
                continue
            for r in pga_residuals(data / "events" / f.folder, devices, u):
                by_model.setdefault(r.model, []).append(r.log10_residual)
    allr = np.concatenate([np.asarray(v) for v in by_model.values()]) if by_model else np.zeros(0)
    if len(allr) == 0:
        return
    parts = ", ".join(f"{m}: {len(v)} records, mean {np.mean(v):+.2f} sd {np.std(v):.2f}" for m, v in sorted(by_model.items()))
    out.print(
        f"PGA, log10(recorded / predicted) at the final location and magnitude, Vs30 760 m/s: "
        f"mean {allr.mean():+.2f}, sd {allr.std():.2f} over {len(allr)} records ({parts})"
    )


def _settings(args) -> int:
    import msgspec

    from .settings import settings_markdown

    s = _load_settings(args, "settings")
    if s is None:
        return 2
    if args.markdown:
        print(settings_markdown(s))
    else:
        print(msgspec.json.format(msgspec.json.encode(s).decode(), indent=2))
    return 0


def _demo(args) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from . import demo, scenarios

    err = Console(stderr=True)
    if args.scenario not in scenarios.names():
        err.print(f"error: unknown scenario {args.scenario!r}; choose one of {', '.join(scenarios.names())}", markup=False)
        return 2
    if args.phones < 100:
        err.print("error: --phones must be at least 100", markup=False)
        return 2
    out = Console(markup=False, highlight=False, width=None if sys.stdout.isatty() else 120)
    settings = _load_settings(args, "demo")
    if settings is None:
        return 2
    sc = scenarios.get(args.scenario)
    out.print(f"yujing demo: {sc.name}, {args.phones:,} simulated phones, seed {args.seed}")
    out.print("timeline, seconds after the origin time (simulated time; nothing is sent to real phones):")

    def line(t: float, text: str):
        if not args.quiet:
            out.print(f"  t{t:+7.2f} s  {text}")

    res = demo.run(sc, args.phones, seed=args.seed, on_line=line, settings=settings)
    s = res.summary()
    t = Table(title="warning time by city (S-wave arrival minus alert delivery)")
    for col in ("city", "distance", "S arrives", "tier", "phone's MMI", "warning"):
        t.add_column(col, justify="left" if col in ("city", "tier") else "right")
    for c in sorted(res.cities, key=lambda c: c.distance_km):
        w = "-" if not math.isfinite(c.warning_s) else (f"late {-c.warning_s:.1f} s" if c.warning_s < 0 else f"{c.warning_s:.1f} s")
        mmi = "-" if not math.isfinite(c.mmi_forecast) else f"{c.mmi_forecast:.1f}"
        t.add_row(c.name, f"{c.distance_km:.0f} km", f"+{c.s_after_origin_s:.1f} s", c.tier or "not alerted", mmi, w)
    out.print(t)
    pw = s["phone_warning_s"]
    for tier, n in s["phones_per_tier"].items():
        extra = ""
        if tier in pw:
            extra = f"; warning median {pw[tier]['median']:.1f} s, {100 * pw[tier]['late_fraction']:.0f} % late"
        out.print(f"phones alerted, {tier}: {n:,}{extra}")

    def f(v, unit):
        return "-" if v is None else f"{v}{unit}"

    out.print(
        f"first alert {f(s['first_alert_s'], ' s')} after origin (M{f(s['first_alert_magnitude'], '')}); final "
        f"M{f(s['final_magnitude'], '')} (true {sc.magnitude}), epicentre error {f(s['location_error_km'], ' km')}; "
        f"false events {s['false_events']}"
    )
    tm = s["timings_s"]
    out.print(f"compute: simulate {tm['simulate']:.1f} s, engine {tm['engine']:.1f} s, alerts {tm['alerts']:.1f} s, total {tm['total']:.1f} s")
    report = Path(args.report)
    report.write_text(demo.report_html(res), encoding="utf-8")
    out.print(f"report: {report.resolve()}")
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        out.print(f"summary: {Path(args.json).resolve()}")
    return 0


def _device_replay(args) -> int:
    from .device.agent import device_replay

    return device_replay(args)


def _serve(args) -> int:
    import asyncio
    import logging

    from .api.auth import ApiLimits
    from .serve import ServeOptions, run

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .retention import RetentionPolicy

    try:
        limits = ApiLimits(max_body_bytes=args.max_request_bytes, rate_per_s=args.rate_limit, burst=args.rate_burst,
                           enrol_per_address=args.enrol_per_address)
        retention = RetentionPolicy.from_days(args.retention_days, interval_s=args.purge_every_s)
    except ValueError as exc:
        print(f"yujing serve: {exc}", file=sys.stderr)
        return 2
    settings = _load_settings(args, "serve")
    if settings is None:
        return 2
    opts = ServeOptions(
        settings=settings,
        host=args.host,
        port=args.port,
        mqtt=args.mqtt,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        store=args.store,
        bus=args.bus,
        data_dir=Path(args.data) if args.data else None,
        replay=not args.no_replay,
        log_http=args.log_http,
        limits=limits,
        trusted_proxies=args.trusted_proxy,
        retention=retention,
        credentials_file=Path(args.credentials_file) if args.credentials_file else None,
        allow_unsigned=args.allow_unsigned,
        gc_freeze_s=args.gc_freeze_s,
    )

    def ready(srv) -> None:
        where = "embedded" if srv.broker is not None else "external"
        print(f"yujing serve: dashboard and API at {srv.http_url}/  (OpenAPI: {srv.http_url}/docs)", flush=True)
        print(f"  devices: MQTT ({where}) at {srv.mqtt_url}, topics {srv.mqtt_topics}", flush=True)
        cfg = srv.service_config()
        sign = ("unsigned messages ACCEPTED (--allow-unsigned)" if cfg.allow_unsigned
                else "signed messages only (enrol: POST /api/enrol)")
        where_creds = cfg.credentials_file or "memory only (devices enrol again after a restart)"
        print(f"  device messages: {sign}; credentials: {where_creds}", flush=True)
        print(f"  store: {srv.store_label}; stop with Ctrl-C", flush=True)
        if srv.operator_key_file is not None:
            print(f"  operator key (first start) written to {srv.operator_key_file} (mode 0600); for the replay "
                  f"control open {srv.http_url}/#key=<that key>", flush=True)
        elif srv.operator_key is not None:
            print(f"  operator key (first start; shown only now, keep it): {srv.operator_key}\n"
                  f"  replay control: {srv.http_url}/#key={srv.operator_key}", flush=True)

    try:
        return asyncio.run(run(opts, on_ready=ready))
    except KeyboardInterrupt:
        return 130


def _keys(args) -> int:
    import getpass

    from .api.auth import create_key, revoke_key
    from .store import StoreError, open_store

    try:
        store = open_store(args.store)
    except (ValueError, StoreError) as exc:
        print(f"yujing keys: {exc}", file=sys.stderr)
        return 2
    # the audit log names who made or revoked a key: the account that ran this command
    actor = f"cli:{getpass.getuser()}"
    try:
        if args.keys_command == "add":
            try:
                key = create_key(store, args.name, args.role, actor)
            except ValueError as exc:
                print(f"yujing keys add: {exc}", file=sys.stderr)
                return 2
            print(key)
            print(f"made {args.role} key {args.name!r}; it is shown only now (the store keeps its SHA-256). "
                  "Send it as 'Authorization: Bearer <key>'.", file=sys.stderr)
        elif args.keys_command == "list":
            rows = store.api_keys()
            if not rows:
                print("no API keys", file=sys.stderr)
            for k in rows:
                state = "live" if k["revoked_at_s"] is None else f"revoked {_iso(k['revoked_at_s'])}"
                print(f"{k['name']}\t{k['role']}\tmade {_iso(k['created_at_s'])}\t{state}")
        elif args.keys_command == "revoke":
            if not revoke_key(store, args.name, actor):
                print(f"yujing keys revoke: no live key named {args.name!r} (see yujing keys list)", file=sys.stderr)
                return 1
            print(f"revoked {args.name!r}; a running server stops taking it within seconds", file=sys.stderr)
    finally:
        store.close()
    return 0


def _purge(args) -> int:
    import getpass
    import time

    from .retention import RetentionPolicy, purge
    from .store import StoreError, open_store

    try:
        policy = RetentionPolicy.from_days(args.older_than)
    except ValueError as exc:
        print(f"yujing purge: --older-than: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_store(args.store)
    except (ValueError, StoreError) as exc:
        print(f"yujing purge: {exc}", file=sys.stderr)
        return 2
    try:
        # the audit log names who purged: the account that ran this command
        counts = purge(store, time.time(), policy, actor=f"cli:{getpass.getuser()}")
    except StoreError as exc:
        print(f"yujing purge: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    cut = _iso(time.time() - policy.retention_s)
    print(f"purged data not linked to an event, older than {args.older_than:g} days (before {cut}): "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yujing",
        description="yujing (预警): earthquake early warning from phones and low-cost accelerometers.",
    )
    p.add_argument("--version", action="version", version=f"yujing {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    dm = sub.add_parser(
        "demo",
        help="simulate a historical earthquake felt by 100,000 phones, end to end",
        description=(
            "Simulate an earthquake from the scenario table felt by a network of phones (placed "
            "where people live), run their triggers and heartbeats through the detection engine and "
            "the alert policy in simulated time, print the timeline and the warning time per city, "
            "and write an offline HTML report. No server, no network."
        ),
    )
    from .scenarios import names as _scenario_names

    dm.add_argument(
        "--scenario",
        default="luding2022",
        help=f"scenario key, one of {', '.join(_scenario_names())} (default luding2022)",
    )
    dm.add_argument("--phones", type=int, default=100_000, help="number of phones (default 100,000)")
    dm.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    dm.add_argument("--report", default="yujing-demo.html", metavar="PATH.html", help="HTML report (default yujing-demo.html)")
    dm.add_argument("--json", metavar="SUMMARY.json", help="write the summary as JSON")
    dm.add_argument("--quiet", "-q", action="store_true", help="no timeline, only the summary")
    dm.add_argument("--settings", metavar="FILE", help="engine settings from a TOML (.toml) or JSON file; what it leaves out keeps its default (yujing settings --settings FILE prints the result; docs/settings.md)")
    dm.set_defaults(func=_demo)

    r = sub.add_parser(
        "replay",
        help="run the detection engine on recorded OpenEEW data",
        description=(
            "Replay recordings in the OpenEEW layout (DATA_DIR/devices.json and "
            "DATA_DIR/events/<event>/<device>/*.jsonl) through the detection engine, in arrival "
            "order, each event folder with a fresh engine. Prints a table with a row per event and folder; when "
            "DATA_DIR/catalog.csv exists, also scores the result against it (detection never reads it)."
        ),
    )
    r.add_argument("data_dir", metavar="DATA_DIR", help="folder with devices.json and events/")
    r.add_argument("--output", "-o", metavar="UPDATES.jsonl", help="write one JSON object per event update")
    r.add_argument("--alerts", metavar="ALERTS.jsonl", help="write one JSON object per alert message (alert, update, cancel)")
    r.add_argument("--cap-dir", metavar="DIR", help="write one CAP 1.2 XML file per alert message into DIR")
    r.add_argument("--quakeml", metavar="EVENTS.xml", help="write every event (all versions) as QuakeML 1.2")
    r.add_argument("--geojson", metavar="DIR", help="write events.geojson and an MMI map per event (USGS feed shapes)")
    r.add_argument(
        "--model",
        choices=("auto", "bssa14", "bchydro_interface", "bchydro_intraslab"),
        default="auto",
        help="ground-motion model for the alert areas (auto: by distance to a subduction trench and depth)",
    )
    r.add_argument("--vs30", metavar="GRID.csv", help="site Vs30 grid: CSV with latitude,longitude,vs30_m_s (default: rock, 760 m/s)")
    r.add_argument("--event", action="append", metavar="NAME", help="replay only this event folder (repeatable)")
    r.add_argument("--no-score", action="store_true", help="do not score against catalog.csv")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    r.add_argument("--settings", metavar="FILE", help="engine settings from a TOML (.toml) or JSON file; what it leaves out keeps its default (yujing settings --settings FILE prints the result; docs/settings.md)")
    r.set_defaults(func=_replay)

    s = sub.add_parser(
        "settings",
        help="print the engine's settings (units in the names)",
        description="Print every constant of the engine with its value; units are in the names.",
    )
    s.add_argument("--markdown", action="store_true", help="as the documented table (docs/settings.md)")
    s.add_argument("--settings", metavar="FILE", help="engine settings from a TOML (.toml) or JSON file; what it leaves out keeps its default (yujing settings --settings FILE prints the result; docs/settings.md)")
    s.set_defaults(func=_settings)

    sv = sub.add_parser(
        "serve",
        help="run the live service: devices over MQTT, engine, alerts, HTTP API and live map",
        description=(
            "Run the whole live system in one process on embedded defaults, with no configuration: an "
            "MQTT broker for devices, the detection engine and alert policy, SQLite, and the HTTP API with "
            "the live map dashboard on 127.0.0.1. Options switch each part to a real server. The device "
            "protocol is in docs/protocol.md, the API in docs/api.md (and at /docs when running). Events, "
            "alerts and k-anonymous counts are public; the rest needs an API key (yujing keys). On its first "
            "start the server makes an operator key, for the dashboard's replay control, and writes it to "
            "<database>.operator-key (mode 0600), or prints it once for a memory or PostgreSQL store."
        ),
    )
    sv.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0 picks a free one)")
    sv.add_argument("--mqtt", metavar="tcp://HOST:PORT", help="use this MQTT broker (Mosquitto, NATS's MQTT listener) instead of the embedded one")
    sv.add_argument("--mqtt-host", default="127.0.0.1", help="embedded broker's address (default 127.0.0.1)")
    sv.add_argument("--mqtt-port", type=int, default=1883, help="embedded broker's port (default 1883; 0 picks a free one)")
    sv.add_argument("--store", default="sqlite:///yujing.db", metavar="URL",
                    help="sqlite:///PATH (default sqlite:///yujing.db), sqlite://:memory:, or postgresql://USER@HOST:PORT/DB")
    sv.add_argument("--bus", metavar="nats://HOST:PORT", help="scale-out over NATS JetStream (see docs/scale-out.md)")
    sv.add_argument("--data", metavar="DIR", help="OpenEEW recordings the dashboard can replay (default: none; scenarios always)")
    sv.add_argument("--no-replay", action="store_true",
                    help="disable the dashboard's replay control: a replay's alerts go to the real devices of its area, so a "
                         "service with real devices should run with this")
    sv.add_argument("--log-http", action="store_true", help="log every HTTP request")
    sv.add_argument("--max-request-bytes", type=int, default=64 * 1024, metavar="N",
                    help="largest HTTP request body accepted, bytes (default 65536; larger: 413)")
    sv.add_argument("--rate-limit", type=float, default=20.0, metavar="PER_S",
                    help="HTTP requests per second allowed to each API key, or each client address without a key "
                         "(default 20; 0: no limit; beyond it: 429 with Retry-After)")
    sv.add_argument("--rate-burst", type=int, default=200, metavar="N",
                    help="requests a caller may make at once before the rate limit applies (default 200)")
    sv.add_argument("--enrol-per-address", type=int, default=500, metavar="N",
                    help="pseudonyms a client address may enrol for itself, and accounts it may open, per UTC day "
                         "(default 500 each; an IPv6 address counts by its /64; enrolments with an operator key or an "
                         "established token do not count; 0: no limit). Bounds how many fakes one address can enrol "
                         "(docs/security.md)")
    sv.add_argument("--trusted-proxy", metavar="ADDR[,ADDR...]",
                    help="reverse proxies whose X-Forwarded-For header names the client, for the rate limit "
                         "(default: none; the header is ignored)")
    sv.add_argument("--retention-days", type=float, default=7.0, metavar="DAYS",
                    help="keep data not linked to an event (device registry rows, by last heard) this many days "
                         "(default 7); purged at start and every --purge-every-s, each purge in the audit log "
                         "(docs/privacy.md)")
    sv.add_argument("--purge-every-s", type=float, default=3600.0, metavar="S",
                    help="seconds between two retention purges (default 3600)")
    sv.add_argument("--credentials-file", metavar="PATH",
                    help="where the device credentials (signing master, enrolled pseudonyms) are kept across restarts "
                         "(default: <database>.credentials beside a SQLite file, mode 0600; memory only for other "
                         "stores, so devices enrol again after a restart); docs/security.md")
    sv.add_argument("--allow-unsigned", action="store_true",
                    help="accept unsigned device messages (a development server only: anyone who can reach the "
                         "broker could then fake triggers); signed ones are still checked")
    sv.add_argument("--gc-freeze-s", type=float, default=10.0, metavar="S",
                    help="every S seconds, move what survived into the garbage collector's permanent generation, so "
                         "that full collections skip a million devices' rows (pauses of 130-220 ms otherwise); "
                         "everything is collected once an hour (default 10; 0: Python's defaults)")
    sv.add_argument("--quiet", "-q", action="store_true", help="warnings only")
    sv.add_argument("--settings", metavar="FILE", help="engine settings from a TOML (.toml) or JSON file; what it leaves out keeps its default (yujing settings --settings FILE prints the result; docs/settings.md)")
    sv.set_defaults(func=_serve)

    pg = sub.add_parser(
        "purge",
        help="delete data not linked to an event that is older than the retention period",
        description=(
            "Delete from the store what the retention rules say is too old: device registry rows not heard from "
            "for --older-than days, and the audit log's keys for device tags older than that (the audit rows stay; "
            "they no longer say which device they named). Events and alerts are kept. The purge, with its counts, "
            "is written to the audit log. yujing serve does the same by itself every hour. See docs/privacy.md."
        ),
    )
    pg.add_argument("--store", default="sqlite:///yujing.db", metavar="URL",
                    help="the store yujing serve uses (default sqlite:///yujing.db)")
    pg.add_argument("--older-than", type=float, default=7.0, metavar="DAYS",
                    help="retention period, days (default 7; fractions allowed)")
    pg.set_defaults(func=_purge)

    ks = sub.add_parser(
        "keys",
        help="make, list and revoke API keys of the HTTP API",
        description=(
            "API keys of yujing serve's HTTP API, kept in the service's store (only a SHA-256 of each key; the key "
            "is printed once, when made). Roles: researcher (finer k-anonymous counts), operator (everything: "
            "replay control, metrics, audited reads of personal data). Making and revoking keys is written to the "
            "audit log. See docs/api.md."
        ),
    )
    ksub = ks.add_subparsers(dest="keys_command", required=True)
    ka = ksub.add_parser("add", help="make a key and print it (once)")
    ka.add_argument("--role", required=True, choices=("researcher", "operator"), help="what the key may do")
    ka.add_argument("--name", required=True, help="who holds it (unique, never reused; the audit log's actor)")
    kl = ksub.add_parser("list", help="names, roles, when made and revoked (never the keys)")
    kr = ksub.add_parser("revoke", help="revoke a key by name")
    kr.add_argument("name", metavar="NAME")
    for k in (ka, kl, kr):
        k.add_argument("--store", default="sqlite:///yujing.db", metavar="URL",
                       help="the store yujing serve uses (default sqlite:///yujing.db)")
        k.set_defaults(func=_keys)

    from . import load as _load

    _load.add_parser(sub)

    d = sub.add_parser("device", help="the device agent (reference client for phones and sensors)")
    dsub = d.add_subparsers(dest="device_command", required=True)
    dr = dsub.add_parser(
        "replay",
        help="run the device agent offline on one device's recording",
        description=(
            "Run the device agent (picker + classifier) on one recording: an OpenEEW device folder "
            "(DATA/events/<event>/<device>/*.jsonl; position from DATA/devices.json) or a CSV file with "
            "columns t,x,y,z (t in s, ms, us or ns; acceleration in m/s^2 with gravity; any rate and "
            "orientation). Writes one JSON object per trigger the device would send; summary on stderr."
        ),
    )
    dr.add_argument("input", metavar="INPUT", help="OpenEEW device folder or t,x,y,z CSV file")
    dr.add_argument("--output", "-o", metavar="TRIGGERS.jsonl", help="write one JSON object per trigger")
    dr.add_argument("--lat", type=float, help="device latitude, degrees (required for CSV; overrides devices.json)")
    dr.add_argument("--lon", type=float, help="device longitude, degrees")
    dr.add_argument("--all", action="store_true", help="also write triggers the agent would not send, with the reason")
    dr.add_argument("--updates", action="store_true", help="one line per message sent (trigger and amplitude updates)")
    dr.add_argument("--units", choices=("m/s2", "g", "gal"), default="m/s2", help="CSV acceleration units (default m/s2)")
    dr.add_argument("--vertical", choices=("auto", "gravity", "x", "y", "z"), default="auto", help="how to find the vertical")
    dr.add_argument("--rate", type=float, metavar="HZ", help="CSV: resample to this rate (default: median rate, snapped)")
    dr.add_argument("--start-time", metavar="ISO", help="CSV with a relative clock: UTC time of t=0")
    dr.add_argument("--secret", metavar="HEX", help="device secret for the pseudonym (default: fixed by the input's name)")
    dr.set_defaults(func=_device_replay)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
