"""The ``yujing`` command line: replay of one real event folder, the JSON-lines output,
the printed summary, help texts, usage errors, and bad input in a synthetic layout."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime, timezone
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from yujing.cli import main
from yujing.score import load_catalog

EVENT = "2020_1_11"  # M5.1, 19 devices, 5 minutes; replays in about 2 s
REQUIRED_KEYS = {"event_id", "version", "issued_at", "origin_time", "latitude", "longitude", "depth_km", "magnitude", "n_devices"}
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


def run_cli(argv: list[str], columns: int | None = 250) -> tuple[int, str, str]:
    """``yujing.cli.main(argv)`` in-process: (exit code, stdout, stderr).

    ``columns`` fixes the console width rich renders at (``None``: rich's default for a
    non-terminal, 80 columns, which is what a pipe or a CI log gets)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS"):
            mp.delenv(var, raising=False)
        if columns is None:
            mp.delenv("COLUMNS", raising=False)
        else:
            mp.setenv("COLUMNS", str(columns))
        with redirect_stdout(out), redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse: --help, usage errors
                rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def parse_time(s: str) -> float:
    assert ISO_Z.match(s), f"not ISO 8601 UTC with a Z: {s!r}"
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    assert t.utcoffset() is not None and t.utcoffset().total_seconds() == 0
    return t.timestamp()


# ------------------------------------------------------------------ one real event


@pytest.fixture(scope="module")
def real_run(openeew_dir, tmp_path_factory):
    out_file = tmp_path_factory.mktemp("cli") / "updates.jsonl"
    rc, out, err = run_cli(["replay", str(openeew_dir), "--event", EVENT, "--output", str(out_file), "--quiet"])
    return rc, out, err, out_file


def test_replay_exit_code_and_output_file(real_run):
    rc, out, err, out_file = real_run
    assert rc == 0, f"exit {rc}\nstdout:\n{out}\nstderr:\n{err}"
    assert out_file.is_file()
    text = out_file.read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines, "a M5.1 recorded by 19 devices produced no update"
    for i, line in enumerate(lines, 1):
        obj = json.loads(line)  # one JSON object per line
        assert isinstance(obj, dict), f"line {i} is not an object"
        missing = REQUIRED_KEYS - obj.keys()
        assert not missing, f"line {i} lacks {sorted(missing)}"
        assert isinstance(obj["event_id"], str) and obj["event_id"]
        assert isinstance(obj["version"], int) and not isinstance(obj["version"], bool)
        assert isinstance(obj["n_devices"], int) and obj["n_devices"] >= 3
        for k in ("latitude", "longitude", "depth_km", "magnitude"):
            assert isinstance(obj[k], (int, float)) and math.isfinite(obj[k]), (i, k, obj[k])
        assert -90 <= obj["latitude"] <= 90 and -180 <= obj["longitude"] <= 180
        assert 0 <= obj["depth_km"] <= 700
        issued, origin = parse_time(obj["issued_at"]), parse_time(obj["origin_time"])
        assert issued > origin, f"line {i}: issued before the origin time"


def test_replay_versions_and_issue_times_per_event(real_run):
    _, _, _, out_file = real_run
    by_event: dict[str, list[dict]] = {}
    for line in out_file.read_text().splitlines():
        obj = json.loads(line)
        by_event.setdefault(obj["event_id"], []).append(obj)
    for eid, objs in by_event.items():
        assert [o["version"] for o in objs] == list(range(1, len(objs) + 1)), eid
        issued = [parse_time(o["issued_at"]) for o in objs]
        assert issued == sorted(issued), f"{eid}: issued_at goes back in time"


def test_replay_output_matches_the_catalogued_quake(real_run, openeew_dir):
    """The final update of the (one) event lies near the catalogued quake: the file holds
    what the engine found, in the right units and order (latitude, longitude)."""
    _, _, _, out_file = real_run
    truth = {c.key: c for c in load_catalog(openeew_dir / "catalog.csv")}[EVENT]
    objs = [json.loads(line) for line in out_file.read_text().splitlines()]
    final = objs[-1]
    assert abs(parse_time(final["origin_time"]) - truth.origin_time_s) < 10.0
    assert abs(final["latitude"] - truth.latitude) < 0.5 and abs(final["longitude"] - truth.longitude) < 0.5
    assert abs(final["magnitude"] - truth.magnitude) < 1.0


def test_replay_summary_names_folder_and_skips(real_run, openeew_dir):
    rc, out, _, out_file = real_run
    assert rc == 0
    # the per-folder table names the folder and the event id found there
    assert EVENT in out
    first_id = json.loads(out_file.read_text().splitlines()[0])["event_id"]
    assert first_id in out
    # says what was skipped (this folder is clean)
    skipped = [line for line in out.splitlines() if line.startswith("skipped input:")]
    assert skipped == ["skipped input: none"], skipped
    assert f"updates written to {out_file}" in out
    # scored against catalog.csv (it exists and --no-score was not given)
    assert "score against catalog.csv" in out
    assert re.search(r"detected 1/1, false events \d+", out), out


def test_replay_no_score(openeew_dir, tmp_path):
    rc, out, err = run_cli(["replay", str(openeew_dir), "--event", EVENT, "--no-score", "--quiet"])
    assert rc == 0, err
    assert "score against" not in out and "detected" not in out
    assert "skipped input:" in out
    assert "updates written" not in out  # no --output given
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ help texts


def test_console_script_is_declared():
    eps = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert eps.get("yujing") == "yujing.cli:main"


def test_help_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "yujing.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: yujing" in proc.stdout
    for word in ("replay", "settings", "--version"):
        assert word in proc.stdout, word


def test_replay_help_lists_options():
    rc, out, _ = run_cli(["replay", "--help"])
    assert rc == 0
    assert "usage: yujing replay" in out
    for word in ("DATA_DIR", "--output", "--event", "--no-score", "--quiet", "devices.json", "catalog.csv"):
        assert word in out, word


def test_no_subcommand_is_a_usage_error():
    rc, _, err = run_cli([])
    assert rc == 2
    assert "replay" in err  # argparse names the choices


# ------------------------------------------------------------------------ bad usage


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "no_such_dir"
    rc, out, err = run_cli(["replay", str(missing), "--quiet"])
    assert rc == 2
    assert "error" in err and "devices.json" in err
    assert str(missing) in err.replace("\n", "")  # says which folder
    assert "Traceback" not in err


def test_data_dir_without_events_folder(tmp_path):
    (tmp_path / "devices.json").write_text('[{"device_id": "A", "latitude": 16.5, "longitude": -98.5}]')
    rc, _, err = run_cli(["replay", str(tmp_path), "--quiet"])
    assert rc == 2
    assert "no events folder" in err and "Traceback" not in err


def test_replay_without_data_dir_argument():
    rc, _, err = run_cli(["replay"])
    assert rc == 2
    assert "DATA_DIR" in err


def test_unknown_event(openeew_dir):
    rc, out, err = run_cli(["replay", str(openeew_dir), "--event", EVENT, "--event", "1999_9_9", "--quiet"])
    assert rc == 2
    assert "1999_9_9" in err and "no event folder" in err
    assert EVENT not in err.split("no event folder", 1)[1].split("under", 1)[0]  # names only the missing one
    assert out == ""  # nothing was replayed


# --------------------------------------------------------- synthetic layout, bad lines

SR = 31.25
N_PER_PACKET = 32
DEVICES = [
    {"device_id": "A01", "latitude": 16.30, "longitude": -98.80},
    {"device_id": "B02", "latitude": 16.60, "longitude": -98.50},
    {"device_id": "C03", "latitude": 16.90, "longitude": -98.20},
]
FOLDER = "2021_3_4"
T0 = 1_615_000_000.0


def packet_lines(dev: str, n: int, rng) -> list[str]:
    out = []
    for k in range(n):
        t = T0 + (k + 1) * N_PER_PACKET / SR
        axes = {a: np.round(rng.normal(0.0, 0.3, N_PER_PACKET), 4).tolist() for a in "xyz"}
        out.append(json.dumps({"country_code": "mx", "device_id": dev, **axes, "device_t": t, "cloud_t": t + 0.25, "sr": SR}))
    return out


def write_layout(root: Path, corrupt: bool) -> dict[str, tuple[str, int]]:
    """devices.json plus one event folder with 40 s of noise from three devices; with
    ``corrupt``, one bad line of each kind (and a folder of an unknown device). Returns
    {reason: (file, line)} of the bad lines."""
    rng = np.random.default_rng(2021)
    root.mkdir(parents=True, exist_ok=True)
    (root / "devices.json").write_text(json.dumps(DEVICES))
    ev = root / "events" / FOLDER
    bad: dict[str, tuple[str, int]] = {}
    for d in DEVICES:
        dev = d["device_id"]
        lines = packet_lines(dev, 40, rng)
        path = ev / dev / "00.jsonl"
        if corrupt and dev == "A01":
            lines[4] = lines[4][: len(lines[4]) // 2]  # truncated JSON (line 5)
            bad["corrupt_json"] = (str(path), 5)
        if corrupt and dev == "B02":
            obj = json.loads(lines[9])
            obj["x"][7] = float("nan")  # json.dumps writes a bare NaN token (line 10)
            lines[9] = json.dumps(obj)
            assert "NaN" in lines[9]
            bad["non_finite"] = (str(path), 10)
        if corrupt and dev == "C03":
            obj = json.loads(lines[14])
            del obj["z"]  # missing axis (line 15)
            lines[14] = json.dumps(obj)
            bad["missing_axis"] = (str(path), 15)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    if corrupt:
        path = ev / "Z99" / "00.jsonl"  # a device that is not in devices.json
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(packet_lines("Z99", 1, rng)) + "\n")
        bad["unknown_device"] = (str(path), 1)
    return bad


def test_synthetic_corrupt_lines_are_skipped_and_counted(tmp_path):
    data = tmp_path / "data"
    write_layout(data, corrupt=True)
    out_file = tmp_path / "updates.jsonl"
    rc, out, err = run_cli(["replay", str(data), "--output", str(out_file), "--quiet"], columns=400)
    assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err
    assert out_file.read_text() == ""  # noise only: no event, but the file is written
    assert FOLDER in out
    skipped = [line for line in out.splitlines() if line.startswith("skipped input:")]
    assert len(skipped) == 1, out
    counts = dict(item.rsplit(" ", 1) for item in skipped[0].removeprefix("skipped input: ").split(", "))
    assert counts == {"corrupt_json": "1", "non_finite": "1", "missing_axis": "1", "unknown_device": "1"}, skipped[0]
    # the good packets were all replayed: 3 devices x 40 lines, less the 3 bad lines
    assert re.search(r"\b117 packets\b", out), out


def test_synthetic_summary_names_file_and_line_of_every_skip(tmp_path):
    data = tmp_path / "data"
    bad = write_layout(data, corrupt=True)
    rc, out, err = run_cli(["replay", str(data), "--quiet"], columns=400)
    assert rc == 0, err
    for reason, (path, line) in bad.items():
        assert f"{path}:{line}" in out, f"{reason}: {path}:{line} not in the summary:\n{out}"


def test_synthetic_clean_layout(tmp_path):
    data = tmp_path / "data"
    write_layout(data, corrupt=False)
    rc, out, err = run_cli(["replay", str(data), "--quiet"])
    assert rc == 0, err
    assert "skipped input: none" in out
    assert re.search(r"\b120 packets\b", out), out


def test_summary_names_folder_at_default_width(tmp_path):
    data = tmp_path / "data"
    write_layout(data, corrupt=False)
    rc, out, err = run_cli(["replay", str(data), "--no-score", "--quiet"], columns=None)
    assert rc == 0, err
    assert FOLDER in out, out


def test_markup_in_data_does_not_crash_the_summary(tmp_path):
    data = tmp_path / "data"
    write_layout(data, corrupt=False)
    path = data / "events" / FOLDER / "A01" / "00.jsonl"
    lines = path.read_text().splitlines()
    obj = json.loads(lines[0])
    obj["device_id"] = "[/bold]"  # rejected as device_mismatch; its message quotes the id
    lines[0] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    rc, out, err = run_cli(["replay", str(data), "--quiet"])
    assert rc == 0, err[-2000:]
    assert "device_mismatch 1" in out


def test_replay_writes_alerts_cap_quakeml_and_geojson(openeew_dir, tmp_path):
    """The M7.4: alert lines, one CAP file per message (schema-valid), QuakeML that ObsPy
    reads, GeoJSON event and MMI maps."""
    from lxml import etree
    from obspy import read_events

    alerts, cap, qml, geo = tmp_path / "alerts.jsonl", tmp_path / "cap", tmp_path / "ev.xml", tmp_path / "geo"
    rc, out, err = run_cli(
        ["replay", str(openeew_dir), "--event", "2020_6_23", "--no-score", "--quiet", "--alerts", str(alerts),
         "--cap-dir", str(cap), "--quakeml", str(qml), "--geojson", str(geo)]
    )
    assert rc == 0, err
    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert lines and lines[0]["msg_type"] == "alert" and lines[0]["version"] == 1
    assert {x["alert_id"] for x in lines} == {lines[0]["alert_id"]}
    for x in lines:
        assert set(x) >= {"alert_id", "event_id", "version", "msg_type", "issued_at", "magnitude", "tiers"}
        assert x["issued_at"].endswith("Z")
        assert all(set(t) == {"name", "min_mmi", "cells"} for t in x["tiers"])
    schema = etree.XMLSchema(etree.parse(str(Path(__file__).parent / "data" / "CAP-v1.2.xsd")))
    files = sorted(cap.glob("*.xml"))
    assert len(files) == len(lines)
    for f in files:
        schema.assertValid(etree.parse(str(f)))
        assert f.stat().st_size <= 8000
    cat = read_events(str(qml))
    assert len(cat) == 1 and cat[0].preferred_magnitude().mag >= 6.8
    events = json.loads((geo / "events.geojson").read_text())
    assert events["type"] == "FeatureCollection" and len(events["features"]) == 1
    mmi_maps = list(geo.glob("mmi_*.geojson"))
    assert len(mmi_maps) == 1
    mmi = json.loads(mmi_maps[0].read_text())
    assert max(f["properties"]["mmi"] for f in mmi["features"]) >= 6.0
    assert "warning time" in out and "take_action" in out
