"""The ``yujing`` command line."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from . import __version__


def _replay(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .replay import iso, replay, write_updates
    from .sources.openeew import iter_event_dirs, load_devices

    console = Console(stderr=True)
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
        result = replay(dirs, devices, on_packet=lambda n: prog.advance(task, n))
    if args.output:
        write_updates(Path(args.output), result)

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

    catalog = data / "catalog.csv"
    if not args.no_score and catalog.exists():
        _print_score(out, data, result, devices)
    return 0


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
    sm = summarise(scores, n_false)
    out.print(
        f"detected {sm.n_detected}/{sm.n_events}, false events {sm.n_false}; medians: first update "
        f"{sm.median_first_delay_p3_s:+.2f} s after P at 3rd device, final epicentre error "
        f"{sm.median_final_location_error_km:.1f} km, |M error| first {sm.median_first_magnitude_error:.2f} "
        f"final {sm.median_final_magnitude_error:.2f}"
    )


def _settings(args) -> int:
    import msgspec

    from .settings import Settings, settings_markdown

    if args.markdown:
        print(settings_markdown())
    else:
        print(msgspec.json.format(msgspec.json.encode(Settings()).decode(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yujing",
        description="yujing (预警): earthquake early warning from phones and low-cost accelerometers.",
    )
    p.add_argument("--version", action="version", version=f"yujing {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

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
    r.add_argument("--event", action="append", metavar="NAME", help="replay only this event folder (repeatable)")
    r.add_argument("--no-score", action="store_true", help="do not score against catalog.csv")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    r.set_defaults(func=_replay)

    s = sub.add_parser(
        "settings",
        help="print the engine's settings (units in the names)",
        description="Print every constant of the engine with its value; units are in the names.",
    )
    s.add_argument("--markdown", action="store_true", help="as the documented table (docs/settings.md)")
    s.set_defaults(func=_settings)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
