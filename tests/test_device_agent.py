"""The device agent and ``yujing device replay``: triggers from a real OpenEEW device, the
same record as a phone would record it (m/s^2, gravity, rotated, irregular, ns), human
motion, privacy of what is sent, alerts, and bad CSV input."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import h3
import msgspec
import numpy as np
import pytest

from yujing.alerting import AlertPolicy, device_warning
from yujing.cli import main
from yujing.device.classifier import EarthquakeClassifier
from yujing.device.features import EARLY_WINDOW_POST_S, WINDOW_POST_S
from yujing.device.agent import (
    CELL_RESOLUTION,
    EARLY_PEAK_SHARE,
    AgentConfig,
    DeviceAgent,
    PacketMessage,
    TriggerMessage,
    read_openeew_device,
    snap_rate_hz,
)
from yujing.engine import Engine
from yujing.geo import distance_km
from yujing.records import Device, EventUpdate, Packet
from yujing.rejects import Rejects
from yujing.replay import replay_folder
from yujing.sources.accel_csv import time_unit_from_step
from yujing.sources.openeew import load_devices
from yujing.sources.simulator import EARLY_PEAK_SHARE as SIM_EARLY_PEAK_SHARE
from yujing.sources.simulator import daily_pseudonym
from yujing.traveltime import default_table
from yujing.wire import encode_alert

EVENT = "2020_1_11"  # M5.1; device 009 is 80 km away and sees a clear P
DEVICE = "009"
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SECRET = bytes(range(16))
G_GAL = 980.665


def parse_iso(s: str) -> float:
    assert ISO_Z.match(s), f"not ISO 8601 UTC: {s!r}"
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    assert t.utcoffset().total_seconds() == 0
    return t.timestamp()


def replay_lines(argv, capsys) -> tuple[int, list[dict], str]:
    """Run ``yujing device replay`` in-process: (exit code, JSON lines written, stderr)."""
    rc = main(["device", "replay", *argv])
    err = capsys.readouterr().err
    out = argv[argv.index("-o") + 1] if "-o" in argv else None
    lines = [json.loads(x) for x in Path(out).read_text().splitlines()] if out and Path(out).exists() else []
    return rc, lines, err


def _training_script():
    name = "yujing_train_classifier"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / "train_classifier.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def random_rotation(rng) -> np.ndarray:
    """A uniformly random proper rotation, the one the classifier's training uses."""
    return _training_script()._random_rotation(rng)


def write_csv(path: Path, t, xyz, header="t,x,y,z", fmt="{:.6f}") -> None:
    with open(path, "w") as fh:
        fh.write(header + "\n")
        for ti, (a, b, c) in zip(t, xyz):
            fh.write(f"{ti},{fmt.format(a)},{fmt.format(b)},{fmt.format(c)}\n")


def agent(**kw) -> DeviceAgent:
    cfg = dict(latitude=16.7712, longitude=-99.1234, secret=SECRET)
    cfg.update(kw)
    return DeviceAgent(AgentConfig(**cfg))


# ------------------------------------------------------------------ a real device


@pytest.fixture(scope="module")
def device_dir(openeew_dir) -> Path:
    return openeew_dir / "events" / EVENT / DEVICE


@pytest.fixture(scope="module")
def p_arrival_s(openeew_dir) -> float:
    """iasp91 P time at the device (catalogue origin; SSN gives no depth: 20 km)."""
    with open(openeew_dir / "catalog.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["event"] == EVENT)
    dev = load_devices(openeew_dir / "devices.json")[DEVICE]
    origin = datetime.fromisoformat(row["origin_time"].replace("Z", "+00:00")).timestamp()
    dist = float(distance_km(float(row["latitude"]), float(row["longitude"]), dev.latitude, dev.longitude))
    return origin + float(default_table().p_time_s(dist, float(row["depth_km"] or 20.0)))


@pytest.fixture(scope="module")
def folder_run(device_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dev") / "triggers.jsonl"
    assert main(["device", "replay", str(device_dir), "-o", str(out)]) == 0
    return [json.loads(x) for x in out.read_text().splitlines()]


def test_openeew_device_folder_gives_the_p_trigger(folder_run, p_arrival_s, device_dir, openeew_dir, tmp_path):
    [trig] = folder_run
    onset = parse_iso(trig["onset_time"])
    assert abs(onset - trig["onset_time_s"]) < 1e-3
    assert abs(onset - p_arrival_s) < 1.0
    assert trig["sent"] and trig["classifier_probability"] >= EarthquakeClassifier.load().threshold
    # which window decided: with 1 s packets both windows often end in the same packet,
    # and then the full model alone decides
    assert trig["decision_window_s"] in (EARLY_WINDOW_POST_S, WINDOW_POST_S)
    if trig["decision_window_s"] == EARLY_WINDOW_POST_S:
        assert trig["classifier_probability"] >= EarthquakeClassifier.load_early().threshold
    # the engine's own picker on the same device (a one-device event folder)
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / DEVICE).symlink_to(device_dir, target_is_directory=True)
    devices = load_devices(openeew_dir / "devices.json")
    engine = replay_folder(tmp_path / "ev", {DEVICE: devices[DEVICE]})
    [first] = [t for t in engine.triggers if t.device_id == DEVICE]
    assert abs(onset - first.onset_time_s) < 0.5
    # what is written is what is sent: pseudonym, cell centre, amplitudes of the last update
    assert h3.get_resolution(trig["cell"]) == CELL_RESOLUTION
    assert (trig["latitude"], trig["longitude"]) == pytest.approx(h3.cell_to_latlng(trig["cell"]))
    assert trig["cell"] == h3.latlng_to_cell(devices[DEVICE].latitude, devices[DEVICE].longitude, CELL_RESOLUTION)
    assert re.fullmatch(r"[0-9a-f]{16}", trig["device_id"])
    assert trig["messages"] == trig["update"] + 1 > 50  # amplitude updates over the track
    assert trig["pga_gal"] > 2 * trig["noise_pga_gal"] > 0


def test_late_amplitude_updates_are_not_new_triggers(openeew_dir):
    """The picker's last amplitude updates of a track can come a packet (1 s here) after
    the agent has forgotten the track: they are not new triggers. OpenEEW 2018_1_8,
    device 008 has one P trigger and nothing else."""
    devs = load_devices(openeew_dir / "devices.json")
    packets, _ = read_openeew_device(openeew_dir / "events" / "2018_1_8" / "008", devs, Rejects())
    ag = agent(units="gal", keep_decisions=True)
    for p in packets:
        ag.feed_packet(p)
    ag.flush()
    assert ag.stats.triggers == 1 and ag.stats.sent == 1 and ag.stats.rejected_incomplete == 0
    assert [d.reason for d in ag.decisions] == [""]


def test_same_record_as_a_phone_csv_gives_the_same_onset(folder_run, device_dir, tmp_path, capsys):
    """m/s^2 with gravity, randomly rotated, sampled at irregular times near 50 Hz, t in ns."""
    packets, _ = read_openeew_device(device_dir, {DEVICE: Device(DEVICE, 0.0, 0.0)}, Rejects())
    t = np.concatenate([p.device_time_s - (len(p.x_gal) - 1 - np.arange(len(p.x_gal))) / p.sample_rate_hz for p in packets])
    x = np.concatenate([np.column_stack([p.x_gal, p.y_gal, p.z_gal]) for p in packets])
    keep = np.concatenate([[True], np.diff(t) > 0])  # packets overlap by a few ms
    t, x = t[keep], x[keep]
    rng = np.random.default_rng(20200111)
    ti = t[0] + np.cumsum(rng.uniform(0.6, 1.4, size=int((t[-1] - t[0]) * 50)) / 50.0)
    ti = ti[ti < t[-1]]
    phone = np.column_stack([np.interp(ti, t, x[:, k]) for k in range(3)])
    phone[:, 0] += G_GAL  # x is the vertical of the OpenEEW sensors
    phone = phone @ random_rotation(rng).T / 100.0
    path = tmp_path / "phone.csv"
    write_csv(path, np.round(ti * 1e9).astype(np.int64), phone)
    out = tmp_path / "phone.jsonl"
    rc, lines, err = replay_lines([str(path), "--lat", "16.77", "--lon", "-99.12", "-o", str(out)], capsys)
    assert rc == 0, err
    assert "t in ns, UNIX time" in err and "vertical = running gravity direction" in err
    [trig] = lines
    assert trig["sent"]
    assert abs(parse_iso(trig["onset_time"]) - folder_run[0]["onset_time_s"]) < 0.5


def test_agents_triggers_alone_locate_the_quake(openeew_dir):
    """Every device of the event runs the agent; the engine gets only their trigger
    messages (cell centres, pseudonyms), as it will from phones, and finds the quake."""
    devices = load_devices(openeew_dir / "devices.json")
    msgs = []
    for folder in sorted((openeew_dir / "events" / EVENT).iterdir()):
        dev = devices[folder.name]
        ag = agent(latitude=dev.latitude, longitude=dev.longitude, secret=bytes.fromhex(f"{int(folder.name):032x}"))
        for p in read_openeew_device(folder, {dev.device_id: dev}, Rejects())[0]:
            ag.feed_packet(p)
        ag.flush()
        msgs += ag.drain()
    eng = Engine({})
    updates = []
    for m in sorted(msgs, key=lambda m: m.trigger.issued_at_s):
        updates += eng.feed_trigger(m.trigger)
    updates += eng.flush()
    assert updates and len({u.event_id for u in updates}) == 1
    final = updates[-1]
    assert not final.retracted and abs(final.magnitude - 5.1) < 0.5 and final.n_devices >= 5
    assert float(distance_km(final.latitude, final.longitude, 16.25, -98.318)) < 20.0  # SSN epicentre
    assert updates[0].issued_at_s - final.origin_time_s < 25.0


def test_human_motion_csv_sends_nothing(tmp_path, capsys):
    """A watch subject the classifier never saw in training (seglearn, shoulder exercises,
    8 min): the picker fires, the classifier rejects every trigger."""
    [(name, acc, sr)] = _training_script().human_streams(watch_subjects=(9,))
    rng = np.random.default_rng(9)
    t = np.cumsum(rng.uniform(0.7, 1.3, len(acc)) / sr)  # relative clock, seconds
    path = tmp_path / "watch.csv"
    write_csv(path, [f"{v:.5f}" for v in t], acc)
    out = tmp_path / "watch.jsonl"
    argv = [str(path), "--lat", "35.0", "--lon", "139.0", "--start-time", "2024-05-01T10:00:00Z", "--all", "-o", str(out)]
    rc, lines, err = replay_lines(argv, capsys)
    assert rc == 0, err
    assert "relative clock" in err
    assert lines, "the picker should fire on arm exercises"
    # the wrist moves before every trigger: the stillness gate drops them all, and the
    # classifier alone rejects every one of them too
    threshold = EarthquakeClassifier.load().threshold
    assert all(not r["sent"] and r["reason"] == "moving" for r in lines)
    assert all(r["classifier_probability"] < threshold for r in lines)
    assert all(r["onset_time"].startswith("2024-05-01T10:") for r in lines)
    # without --all nothing is written
    rc, lines, _ = replay_lines([str(path), "--lat", "35.0", "--lon", "139.0", "--start-time", "2024-05-01T10:00:00Z", "-o", str(out)], capsys)
    assert rc == 0 and lines == []


# ------------------------------------------------------------------ signal path


def test_orientation_gravity_and_rate_from_a_fast_irregular_phone():
    """A 2 Hz vertical shake of 10 gal on a phone lying at a random attitude, sampled at
    ~400 Hz with jitter: the agent works at 100 Hz and its vertical holds the shake."""
    rng = np.random.default_rng(4)
    t = 1.7e9 + np.cumsum(rng.uniform(0.5, 1.5, 400 * 30) / 400.0)
    vert = 10.0 * np.sin(2 * np.pi * 2.0 * t)
    acc = np.column_stack([vert + G_GAL, np.zeros_like(t), np.zeros_like(t)]) @ random_rotation(rng).T / 100.0
    ag = agent(share_raw=True)
    ag.feed(t, acc[:, 0], acc[:, 1], acc[:, 2])
    ag.flush()
    assert ag.stats.input_rate_hz == pytest.approx(400, rel=0.05)
    assert ag.stats.rate_hz == 100.0 and ag.stats.orientation == "gravity"
    pk = [m.packet for m in ag.drain() if isinstance(m, PacketMessage)]
    late = pk[20:]  # after the gravity estimate settled
    x = np.concatenate([p.x_gal for p in late])
    yz = np.concatenate([p.y_gal + p.z_gal for p in late])
    assert np.sqrt(np.mean(x**2)) == pytest.approx(10.0 / math.sqrt(2), rel=0.05)
    assert np.sqrt(np.mean(yz**2)) < 0.2
    assert all(p.sample_rate_hz == 100.0 and len(p.x_gal) == 100 for p in pk[:-1])


def test_gaps_restart_and_bad_samples_are_counted():
    ag = agent(units="gal")
    t = np.concatenate([np.arange(0, 20, 0.02), np.arange(30, 50, 0.02)]) + 1.7e9
    x = np.random.default_rng(0).normal(0, 0.3, (len(t), 3))
    x[5, 1] = np.nan
    ag.feed(t, x[:, 0], x[:, 1], x[:, 2])
    ag.feed(t[:10], x[20:30, 0], x[20:30, 1], x[20:30, 2])  # times already seen
    ag.flush()
    assert ag.stats.streams == 2
    assert ag.rejects.notes == {"gap": 1}
    assert ag.rejects.by_reason() == {"non_monotonic_time": 10, "non_finite": 1}
    assert ag.stats.samples_in == len(t) - 1


def test_rate_snapping():
    assert snap_rate_hz(49.6) == 50.0 and snap_rate_hz(31.1) == 31.25 and snap_rate_hz(415.0) == 400.0
    assert snap_rate_hz(75.0) == 75.0


# ------------------------------------------------------------------ stillness gate


def _phone_with_quake(motion_gal: float, turn_deg: float = 0.0, burst_gal: float = 100.0, **kw) -> DeviceAgent:
    """A phone lying at rest (gravity on x, 1 gal sensor noise, 50 Hz) that is handled
    (a 1.8 Hz sway of ``motion_gal`` with its harmonic) until 3 s before a clear
    ``burst_gal`` P onset at 25 s, and turned by ``turn_deg`` (gravity swings from x
    towards y) over the second from 25.2 s, as a hand picking it up would; the agent has
    run to 60 s."""
    ag = agent(units="gal", keep_decisions=True, **kw)
    rng = np.random.default_rng(1)
    sr = 50.0
    t = np.arange(0, 60, 1 / sr)
    x = rng.normal(0, 1.0, (len(t), 3))
    sway = motion_gal * (np.sin(2 * np.pi * 1.8 * t) + 0.5 * np.sin(2 * np.pi * 3.6 * t + 1.0)) * (t < 22.0)
    angle = np.radians(turn_deg) * np.clip(t - 25.2, 0.0, 1.0)
    x[:, 0] += sway + G_GAL * np.cos(angle)
    x[:, 1] += 0.4 * sway + G_GAL * np.sin(angle)
    on = t >= 25.0
    burst = burst_gal * np.sin(2 * np.pi * 6.0 * t) * np.minimum((t - 25.0) / 0.5, 1.0) * np.exp(-np.maximum(t - 25.0, 0) / 6)
    x[on] += burst[on, None] * np.array([1.0, 0.3, 0.2])
    ag.feed(1.7e9 + t, x[:, 0], x[:, 1], x[:, 2])
    ag.flush()
    return ag


def test_still_phone_trigger_passes_the_stillness_gate():
    ag = _phone_with_quake(0.0)
    [d] = ag.decisions
    assert d.sent and d.reason == "" and abs(d.onset_time_s - (1.7e9 + 25.0)) < 0.5
    assert d.still_rms_gal < 2.0  # sensor noise: sqrt(3) x 1 gal
    assert d.tilt_deg < 1.0  # 100 gal of 6 Hz shaking averages out over the last second
    # the block holding the window's last sample ends there: the trigger leaves at once,
    # not at the end of a 0.25 s block
    first = next(m for m in ag.outbox if isinstance(m, TriggerMessage))
    assert WINDOW_POST_S - 0.03 <= first.trigger.issued_at_s - first.trigger.onset_time_s <= WINDOW_POST_S
    assert ag.stats.sent == 1 and ag.stats.rejected_moving == 0
    assert ag.is_still and ag.still_rms_gal < ag.config.still_max_gal


def test_trigger_after_handling_is_gated_as_moving():
    """The classifier passes the P onset, but the phone was being moved 3 s before it:
    the gate drops the trigger (reason "moving") and nothing is sent. Without the gate
    (``still_max_gal=inf``) the same trigger is sent."""
    ag = _phone_with_quake(20.0)
    [d] = ag.decisions
    assert d.probability >= ag.classifier.threshold
    assert not d.sent and d.reason == "moving" and d.still_rms_gal > ag.config.still_max_gal
    assert ag.stats.rejected_moving == 1 and ag.stats.sent == 0
    assert not any(isinstance(m, TriggerMessage) for m in ag.drain())
    off = _phone_with_quake(20.0, still_max_gal=math.inf)
    assert [x.sent for x in off.decisions] == [True] and off.stats.sent == 1


def test_phone_picked_up_at_the_onset_is_gated_as_turned():
    """A still phone that starts to move and turns by 30 degrees within the classifier's
    window is a pick-up, not a P wave: dropped as "turned". The tilt compares the mean
    acceleration before the onset with the mean over the window's last second, while the
    turn is still under way: 23 degrees here. Without the tilt gate the same window goes
    on to the classifier (which rejects this one too: the swinging gravity is nothing
    like a P wave)."""
    ag = _phone_with_quake(0.0, turn_deg=30.0)
    [d] = ag.decisions
    assert not d.sent and d.reason == "turned"
    assert 15.0 < d.tilt_deg < 30.0 and d.still_rms_gal < 2.0
    assert ag.stats.rejected_turned == 1 and ag.stats.sent == 0
    off = _phone_with_quake(0.0, turn_deg=30.0, tilt_max_deg=math.inf)
    [d_off] = off.decisions
    assert d_off.reason != "turned" and abs(d_off.tilt_deg - d.tilt_deg) < 1e-9
    # a small turn (a phone nudged on the table) stays under the 10 degree limit
    small = _phone_with_quake(0.0, turn_deg=5.0)
    [d_small] = small.decisions
    assert d_small.reason != "turned" and d_small.tilt_deg < 5.0
    with pytest.raises(ValueError, match="tilt_max_deg"):
        agent(tilt_max_deg=0.0)


def test_is_still_follows_the_newest_seconds():
    ag = agent(units="gal")
    assert not ag.is_still  # no data yet
    rng = np.random.default_rng(3)
    t = 1.7e9 + np.arange(0, 30, 0.02)
    x = rng.normal(0, 1.0, (len(t), 3))
    x[:, 2] += G_GAL
    ag.feed(t, x[:, 0], x[:, 1], x[:, 2])
    assert ag.is_still
    t2 = t[-1] + np.arange(1, 251) * 0.02  # 5 s of walking-like motion
    walk = 300.0 * np.sin(2 * np.pi * 1.8 * t2)
    ag.feed(t2, x[:250, 0] + walk, x[:250, 1], x[:250, 2])
    assert not ag.is_still and ag.still_rms_gal > 100.0
    with pytest.raises(ValueError, match="still_max_gal"):
        agent(still_max_gal=0.0)
    with pytest.raises(ValueError, match="still_before_s"):
        agent(still_before_s=math.nan)


# ------------------------------------------------------------------ privacy


def _quake_signal(sr: float = 50.0, burst_gal: float = 30.0):
    rng = np.random.default_rng(1)
    t = np.arange(0, 60, 1 / sr)
    x = rng.normal(0, 0.2, (len(t), 3))
    on = t >= 25.0
    burst = burst_gal * np.sin(2 * np.pi * 6.0 * t) * np.minimum((t - 25.0) / 0.5, 1.0) * np.exp(-np.maximum(t - 25.0, 0) / 6)
    x[on] += burst[on, None] * np.array([1.0, 0.3, 0.2])
    return t, x


def _quake_agent(sr: float = 50.0, burst_gal: float = 30.0, **kw):
    """An agent fed a clear synthetic P onset on quiet noise (gal, no gravity)."""
    ag = agent(units="gal", keep_decisions=True, **kw)
    t, x = _quake_signal(sr, burst_gal)
    # the onset at 23:59:45 UTC: the amplitude updates run past midnight
    t0 = datetime.fromisoformat("2024-03-01T23:59:20+00:00").timestamp()
    ag.feed(t0 + t, x[:, 0], x[:, 1], x[:, 2])
    ag.flush()
    return ag


def test_early_decision_sends_a_clear_onset_half_a_second_sooner():
    """A clear onset: the early model passes it at EARLY_WINDOW_POST_S after the onset;
    with the early stage off, the same trigger leaves at WINDOW_POST_S. Both carry the
    same onset; the decision records which window decided."""
    on = _quake_agent()
    off = _quake_agent(early_decision=False)
    [d_on], [d_off] = on.decisions, off.decisions
    assert d_on.sent and d_off.sent and d_on.onset_time_s == d_off.onset_time_s
    assert d_on.window_s == EARLY_WINDOW_POST_S and d_off.window_s == WINDOW_POST_S
    assert d_on.probability >= on.early_classifier.threshold > on.classifier.threshold
    assert on.stats.sent_early == 1 and off.stats.sent_early == 0 and off.early_classifier is None
    first_on = next(m for m in on.outbox if isinstance(m, TriggerMessage)).trigger
    first_off = next(m for m in off.outbox if isinstance(m, TriggerMessage)).trigger
    assert EARLY_WINDOW_POST_S - 0.03 <= first_on.issued_at_s - first_on.onset_time_s <= EARLY_WINDOW_POST_S
    assert WINDOW_POST_S - 0.03 <= first_off.issued_at_s - first_off.onset_time_s <= WINDOW_POST_S
    # later updates are the same track either way
    assert [m.trigger.update for m in on.outbox if isinstance(m, TriggerMessage)][:3] == [0, 1, 2]


def test_the_early_stage_only_runs_where_it_can_be_early_and_sure():
    """No early send (the full window decides) when the device is slower than
    EARLY_MIN_RATE_HZ, when the peak by 1 s is past half of peak_max_gal, or when the
    full window is already in hand at the early check (a 3 s packet holds both)."""
    slow = _quake_agent(sr=20.0)
    assert slow.decisions[0].window_s == WINDOW_POST_S and slow.stats.sent_early == 0
    strong = _quake_agent(burst_gal=300.0)
    [d] = strong.decisions
    assert d.window_s == WINDOW_POST_S and strong.stats.sent_early == 0
    assert EARLY_PEAK_SHARE * strong.config.peak_max_gal < d.peak_gal <= strong.config.peak_max_gal
    t, x = _quake_signal()
    ag = agent(units="gal", keep_decisions=True)
    t0 = 1.7e9
    n = 150  # 3 s packets at 50 Hz
    for a in range(0, len(t) - n + 1, n):
        ag.feed_packet(Packet("dev", t0 + t[a + n - 1], t0 + t[a + n - 1], 50.0, *(x[a : a + n, k].tolist() for k in range(3))))
    ag.flush()
    [d] = ag.decisions
    assert d.sent and d.window_s == WINDOW_POST_S and ag.stats.sent_early == 0
    # the simulator models the same early-stage limit
    assert SIM_EARLY_PEAK_SHARE == EARLY_PEAK_SHARE


def test_strength_gate_reads_all_data_since_the_onset():
    """With 3 s packets the agent decides with data beyond the window in hand; a motion
    that is moderate for 1.5 s and then far stronger is dropped as too_strong on the
    strength seen since the onset, though the window itself stayed under the limit."""
    t, x = _quake_signal(burst_gal=60.0)
    late = (t >= 26.8) & (t < 27.5)
    x[late] += 900.0 * np.sin(2 * np.pi * 3.0 * t[late])[:, None] * np.array([0.6, 0.6, 0.5])
    ag = agent(units="gal", keep_decisions=True)
    t0 = 1.7e9
    n = 150  # 3 s packets at 50 Hz: the onset at 25 s, the packet ends at 27 s... 30 s
    for a in range(0, len(t) - n + 1, n):
        ag.feed_packet(Packet("dev", t0 + t[a + n - 1], t0 + t[a + n - 1], 50.0, *(x[a : a + n, k].tolist() for k in range(3))))
    ag.flush()
    [d] = ag.decisions
    win = (t >= 25.0) & (t < 25.0 + WINDOW_POST_S)
    assert np.sqrt((x[win] ** 2).sum(axis=1)).max() < ag.config.peak_max_gal  # the window alone passes
    assert not d.sent and d.reason == "too_strong" and d.peak_gal > ag.config.peak_max_gal


def test_an_onset_the_early_model_doubts_waits_for_the_full_window():
    """The 100 gal sway-free onset of _phone_with_quake is not sure enough for the early
    model: nothing leaves at 1 s, and the full window sends it at 1.5 s."""
    ag = _phone_with_quake(0.0)
    [d] = ag.decisions
    assert d.sent and d.window_s == WINDOW_POST_S and ag.stats.sent_early == 0


def test_strength_gate_drops_more_than_a_loose_phone_can_record():
    """The same still phone and onset, scaled past peak_max_gal: dropped as too_strong,
    and the early stage does not send it either. With the gate off it is not dropped
    for strength."""
    ok = _phone_with_quake(0.0)
    assert ok.decisions[0].sent and ok.decisions[0].peak_gal < 200.0
    strong = _phone_with_quake(0.0, burst_gal=800.0)
    [d] = strong.decisions
    assert not d.sent and d.reason == "too_strong" and d.peak_gal > 500.0
    assert strong.stats.rejected_strong == 1 and strong.stats.sent == 0 and not strong.outbox
    [d_off] = _phone_with_quake(0.0, burst_gal=800.0, peak_max_gal=math.inf).decisions
    assert d_off.reason != "too_strong" and abs(d_off.peak_gal - d.peak_gal) < 1e-9
    with pytest.raises(ValueError, match="peak_max_gal"):
        agent(peak_max_gal=0.0)


def test_what_is_sent_hides_position_and_secret_and_rotates_daily():
    ag = _quake_agent()
    msgs = ag.drain()
    assert msgs and all(isinstance(m, TriggerMessage) for m in msgs)  # no raw packets
    assert ag.stats.sent == 1 and ag.stats.packet_messages == 0
    wire = b"".join(msgspec.msgpack.encode(m) for m in msgs) + b"".join(msgspec.json.encode(m) for m in msgs)
    assert SECRET.hex().encode() not in wire and SECRET not in wire
    assert b"16.7712" not in wire and b"-99.1234" not in wire
    lat, lon = h3.cell_to_latlng(ag.cell)
    assert all(m.trigger.latitude == lat and m.trigger.longitude == lon and m.cell == ag.cell for m in msgs)
    assert h3.get_resolution(ag.cell) == 7 and h3.latlng_to_cell(16.7712, -99.1234, 7) == ag.cell
    # the pseudonym rotates at midnight UTC, mid-trigger, and is stable within a day
    days = {}
    for m in msgs:
        day = datetime.fromtimestamp(m.trigger.issued_at_s, tz=timezone.utc).date().isoformat()
        days.setdefault(day, set()).add(m.trigger.device_id)
    assert sorted(days) == ["2024-03-01", "2024-03-02"]
    assert all(len(ids) == 1 for ids in days.values())
    assert days["2024-03-01"] != days["2024-03-02"]
    assert days["2024-03-01"] == {daily_pseudonym(SECRET, "2024-03-01")}
    assert ag.pseudonym(1709337600.0) == ag.pseudonym(1709337600.0 + 86399.0) != ag.pseudonym(1709337600.0 - 1.0)
    assert [m.trigger.update for m in msgs] == list(range(len(msgs)))
    # sent once a classifier's window is complete: the early model's at the soonest
    assert msgs[0].trigger.window_s >= EARLY_WINDOW_POST_S


def test_raw_packets_only_when_opted_in():
    ag = _quake_agent(share_raw=True)
    msgs = ag.drain()
    pk = [m for m in msgs if isinstance(m, PacketMessage)]
    assert len(pk) == 60 and ag.stats.packet_messages == 60
    assert all(m.packet.device_id == ag.pseudonym(m.packet.device_time_s) for m in pk)
    assert sum(isinstance(m, TriggerMessage) for m in msgs) == ag.stats.trigger_messages > 0



def test_outbox_messages_signed_with_enrolled_credentials_pass_the_servers_door():
    """docs/security.md: the agent signs with the credential a server enrolled for its
    pseudonym (POST /api/enrol). Enrolled on day one only: day one's triggers and raw
    packets pass the server's Guard, each numbered for the replay window; day two's go
    unsigned and are refused as such; a replayed payload is refused; nothing is signed
    with a key the server did not issue."""
    from yujing import protocol, security
    from yujing.device.signing import DeviceSigner, enrol_request

    ag = _quake_agent(share_raw=True)
    msgs = ag.drain()
    issuer = security.Issuer(bytes(range(32)))
    day1 = daily_pseudonym(SECRET, "2024-03-01")
    assert msgspec.json.decode(enrol_request([day1])) == {"pseudonyms": [day1]}
    # the API's answer (src/yujing/api/app.py, enrol)
    cred = issuer.enrol(day1, 1709251200.0)
    signer = DeviceSigner()
    refused = signer.add_enrolment({"kid": issuer.kid.hex(), "credentials": [{"device": day1, "key": cred.key.hex()}],
                                    "refused": []})
    assert refused == [] and set(signer.credentials) == {day1}
    guard = security.Guard(issuer, security.GuardConfig(rate_limits=False))
    verdict = {}
    first = None
    for m in msgs:
        sent = m.trigger.issued_at_s if isinstance(m, TriggerMessage) else m.packet.device_time_s
        topic, payload = signer.wire(m, sent)
        decoded = protocol.decode(topic, payload)
        assert decoded.device == (m.trigger.device_id if isinstance(m, TriggerMessage) else m.packet.device_id)
        try:
            guard.check(topic, payload, decoded, sent)
            reason = "ok"
        except protocol.ProtocolError as exc:
            reason = exc.reason
        verdict.setdefault((decoded.device, reason), 0)
        verdict[(decoded.device, reason)] += 1
        if first is None and reason == "ok":
            first = (topic, payload, decoded, sent)
    day2 = daily_pseudonym(SECRET, "2024-03-02")
    kinds = {type(m) for m in msgs}
    assert kinds == {TriggerMessage, PacketMessage}
    assert verdict[(day1, "ok")] > 10 and verdict[(day2, "unsigned")] > 0
    assert set(verdict) == {(day1, "ok"), (day2, "unsigned")}, verdict
    with pytest.raises(protocol.ProtocolError) as exc:
        guard.check(*first)
    # seq follows the clock (ms of the day): the first message is far below the window now
    assert exc.value.reason in ("replayed", "seq_too_old")
    # the agent restarts halfway through (a new signer, the same credential): what it
    # sends after the restart passes, numbered above what the server saw (numbered from 1
    # again, it was all refused as replayed for the rest of the day)
    mine = [m for m in msgs if isinstance(m, TriggerMessage) and m.trigger.device_id == day1]
    guard2 = security.Guard(issuer, security.GuardConfig(rate_limits=False))
    half = len(mine) // 2
    for signer_now, part in ((DeviceSigner({day1: cred}), mine[:half]), (DeviceSigner({day1: cred}), mine[half:])):
        for m in part:
            topic, payload = signer_now.wire(m, m.trigger.issued_at_s)
            guard2.check(topic, payload, protocol.decode(topic, payload), m.trigger.issued_at_s)


def test_a_message_sent_again_keeps_its_seq_and_is_signed_again():
    """docs/protocol.md, "Connection": a QoS 1 message not acknowledged when its
    connection dropped (the server killed before journaling it) is sent again, stamped
    with its real sending time and signed again, with the **same** seq
    (``DeviceSigner.sender`` with ``MqttClient(remake_on_resend=True)``). The copy's
    signature verifies and a server that never took the first copy takes it (not a
    replay); a server that took the first refuses it as ``replayed`` (never taken twice);
    a newer message goes on numbering above it. Then the same through a real MQTT client
    and the embedded broker, whose first connection dies before the PUBACK."""
    import asyncio

    from yujing import protocol, security
    from yujing.bus.mqtt import MqttClient
    from yujing.bus.mqtt_broker import EmbeddedBroker
    from yujing.device.signing import DeviceSigner

    msgs = _quake_agent(share_raw=True).drain()
    issuer = security.Issuer(bytes(range(32)))
    day1 = daily_pseudonym(SECRET, "2024-03-01")
    cred = issuer.enrol(day1, 1709251200.0)
    mine = [m for m in msgs if isinstance(m, TriggerMessage) and m.trigger.device_id == day1]
    pkt = next(m for m in msgs if isinstance(m, PacketMessage) and m.packet.device_id == day1)
    assert len(mine) >= 2
    guard = lambda: security.Guard(issuer, security.GuardConfig(rate_limits=False))  # noqa: E731

    def check(g, topic, payload, arrival_s) -> str:
        try:
            g.check(topic, payload, protocol.decode(topic, payload), arrival_s)
            return "ok"
        except protocol.ProtocolError as exc:
            return exc.reason

    signer = DeviceSigner({day1: cred})
    clock = [mine[0].trigger.issued_at_s + 0.01]
    topic, make = signer.sender(mine[0], lambda: clock[0])
    assert topic == protocol.topic_for("trig", mine[0].cell)
    first = make()  # written into a connection whose server died before taking it
    clock[0] += 3.7  # the device reconnected 3.7 s later and sends it again
    again = make()
    a, b = protocol.decode(topic, first), protocol.decode(topic, again)
    assert b.seq == a.seq and b.sent_s == pytest.approx(a.sent_s + 3.7) and b.sig != a.sig
    assert msgspec.structs.replace(b, sent_s=a.sent_s, sig=a.sig) == a  # nothing else changed
    topic1, make1 = signer.sender(mine[1], lambda: clock[0])
    newer = make1()
    assert protocol.decode(topic1, newer).seq > a.seq  # numbering goes on above the re-sent one
    # the restarted server never took the first copy: the copy passes its door, then the newer one
    g = guard()
    assert check(g, topic, again, clock[0] + 0.05) == "ok"
    assert check(g, topic1, newer, clock[0] + 0.06) == "ok"
    assert check(g, topic, first, clock[0] + 0.07) in ("replayed", "seq_too_old")  # the old bytes, if they ever came
    # the order matters: seq counts the milliseconds of the day, so a copy arriving after a
    # message made 3.7 s later is below the replay window (256) and refused; the client
    # sends what it holds, re-sent messages first, before anything newer
    g = guard()
    assert check(g, topic1, newer, clock[0] + 0.05) == "ok"
    assert check(g, topic, again, clock[0] + 0.06) == "seq_too_old"
    # a server that took the first copy refuses the second: one message, taken once
    g = guard()
    assert check(g, topic, first, a.sent_s + 0.05) == "ok"
    assert check(g, topic, again, clock[0] + 0.05) == "replayed"
    # the signature is checked: the first copy's bytes with only sent_s moved are refused
    forged = protocol.encode(msgspec.structs.replace(a, sent_s=b.sent_s))
    assert check(guard(), topic, forged, clock[0] + 0.05) == "bad_signature"
    # a raw packet has no sent_s: sent again, its bytes are the same (and still verify)
    ptopic, pmake = signer.sender(pkt, lambda: clock[0])
    p1 = pmake()
    assert pmake() == p1 and check(guard(), ptopic, p1, clock[0]) == "ok"

    # through MQTT: the embedded broker's first connection is cut before it acknowledges
    # the message (a server killed before journaling it); the client reconnects and sends
    # it again, made again by the signer
    async def go():
        seen: list[bytes] = []

        def hook(client_id, t, payload, qos, retain):
            seen.append(payload)
            return False if len(seen) == 1 else None  # the first copy is never acknowledged

        broker = EmbeddedBroker("127.0.0.1", 0, on_message=hook)
        await broker.start()
        dev = MqttClient("127.0.0.1", broker.port, "phone", outbox=100, reconnect_min_s=0.05, reconnect_max_s=0.1,
                         seed=1, remake_on_resend=True)
        try:
            await dev.connect()
            s2 = DeviceSigner({day1: cred})
            t_dev = [clock[0] + 10.0]
            dev.publish_nowait(*s2.sender(mine[0], lambda: t_dev[0]), qos=1)
            t0 = asyncio.get_running_loop().time()
            while not seen:
                assert asyncio.get_running_loop().time() - t0 < 5, "the first copy never reached the broker"
                await asyncio.sleep(0.01)
            t_dev[0] += 2.0
            for c in list(broker.conns):
                c.tr.abort()  # the server gone before its PUBACK
            assert await dev.drain(5), dev.stats()
        finally:
            await dev.disconnect()
            await broker.stop()
        return seen, dev.stats(), t_dev[0]

    seen, stats, t_resent = asyncio.run(go())
    assert len(seen) == 2 and stats["outbox_requeued"] == 1 and stats["acked"] == 1, (len(seen), stats)
    c1, c2 = (protocol.decode(topic, p) for p in seen)
    assert c2.seq == c1.seq and c2.sent_s == pytest.approx(t_resent) and c2.sent_s == pytest.approx(c1.sent_s + 2.0)
    g = guard()
    assert check(g, topic, seen[1], t_resent + 0.05) == "ok"  # a new server: taken
    assert check(g, topic, seen[0], t_resent + 0.06) == "replayed"


# ------------------------------------------------------------------ alerts


def test_on_alert_matches_device_warning():
    t0 = 1_700_000_000.0
    upd = EventUpdate(
        event_id="yjT", version=1, issued_at_s=t0 + 8.0, origin_time_s=t0, latitude=16.4, longitude=-99.0,
        depth_km=20.0, magnitude=7.0, magnitude_sigma=0.2, n_devices=6,
    )  # fmt: skip
    policy = AlertPolicy(model="bssa14")
    [alert] = policy.on_update(upd)
    ag = agent()
    now = t0 + 9.0
    w = ag.on_alert(encode_alert(alert), now)
    ref = device_warning(alert, 16.7712, -99.1234, now)
    assert (w.mmi, w.tier, w.countdown_s, w.distance_km) == (ref.mmi, ref.tier, ref.seconds_to_s_wave, ref.distance_km)
    assert w.tier == "take_action" and 0 < w.countdown_s < 15 and w.alert_id == "yjT-alert"
    assert ag.on_alert(alert, now).mmi == w.mmi  # the record itself works too
    [cancel] = policy.on_update(msgspec.structs.replace(upd, version=2, issued_at_s=t0 + 12.0, retracted=True))
    c = ag.on_alert(encode_alert(cancel), t0 + 12.0)
    assert c.msg_type == "cancel" and c.tier == "" and math.isnan(c.countdown_s)
    assert (w.screen, w.alarm, w.show_countdown) == ("take_action", True, True)
    assert (c.screen, c.alarm, c.show_countdown) == ("cancelled", False, False)
    late = ag.on_alert(alert, now)  # an older message does not undo the cancel, nor ring again
    assert (late.version, late.screen, late.alarm, late.change) == (2, "cancelled", False, "stale")
    assert ag.warnings[alert.alert_id] == c
    assert ag.on_alert(b"\x93garbage", now) is None and ag.rejects.by_reason() == {"bad_alert": 1}


# ------------------------------------------------------------------ CSV input


def test_time_units_from_the_sample_step():
    assert [time_unit_from_step(s) for s in (0.02, 20.0, 2e4, 2e7)] == ["s", "ms", "us", "ns"]
    with pytest.raises(ValueError, match="no unit"):
        time_unit_from_step(5e9)


def test_bad_csv_lines_are_named_counted_and_skipped(tmp_path, capsys):
    rng = np.random.default_rng(3)
    n = 1500
    t_ms = 1_700_000_000_000 + np.arange(n) * 20  # UNIX ms, 50 Hz
    xyz = rng.normal(0, 0.01, (n, 3)) + [0.0, 0.0, 9.81]
    path = tmp_path / "bad.csv"
    write_csv(path, t_ms, xyz, header="t,x,y,z,temperature")
    lines = path.read_text().splitlines()
    lines[10] = f"{t_ms[9]},abc,0,9.8,20"  # line 11: not a number
    lines[20] = f"{t_ms[19]},0,nan,9.8,20"  # line 21: NaN
    lines[30] = f"{t_ms[29]},0,0"  # line 31: too few fields
    lines[40] = f"{t_ms[10]},0,0,9.8,20"  # line 41: time goes back
    path.write_text("\n".join(lines) + "\n")
    rc, out, err = replay_lines([str(path), "--lat", "1", "--lon", "2", "-o", str(tmp_path / "o.jsonl")], capsys)
    assert rc == 0, err
    assert "t in ms, UNIX time" in err
    for reason, line in (("not_a_number", 11), ("non_finite", 21), ("bad_row", 31), ("non_monotonic_time", 41)):
        assert f"{reason}: 1" in err and f"{path}:{line}:" in err
    assert f"{n - 4:,} good lines" in err


@pytest.mark.parametrize(
    "text, argv, message",
    [
        ("time,x,y\n1,2,3\n", ["--lat", "1", "--lon", "2"], r"header must name the columns t,x,y,z; missing t,z"),
        ("t,x,y,z\n" + "".join(f"{i * 0.02},0,0,9.8\n" for i in range(5)), ["--lat", "1", "--lon", "2"], r"only 5 good lines"),
        ("t,x,y,z\n0,0,0,9.8\n", [], r"needs the device's position: pass --lat and --lon"),
        ("", ["--lat", "1", "--lon", "2"], r"empty file"),
    ],
)
def test_unusable_csv_is_a_clear_error(tmp_path, capsys, text, argv, message):
    path = tmp_path / "x.csv"
    path.write_text(text)
    rc = main(["device", "replay", str(path), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(message, err), err
    assert str(path) in err or "--lat" in err


def test_missing_input_and_missing_position(tmp_path, capsys):
    assert main(["device", "replay", str(tmp_path / "nope.csv"), "--lat", "1", "--lon", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a" / "b" / "dev").mkdir(parents=True)
    assert main(["device", "replay", str(tmp_path / "a" / "b" / "dev")]) == 2
    assert "pass --lat and --lon" in capsys.readouterr().err
