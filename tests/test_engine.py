"""The engine on real recordings: causality, determinism, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import pytest

from yujing.engine import Engine
from yujing.records import Packet
from yujing.rejects import Rejects
from yujing.sources.openeew import default_data_dir, iter_packets, load_devices

DATA = default_data_dir()
EVENT = "2020_1_11"  # M5.1, 19 devices, 5 minutes


@pytest.fixture(scope="module")
def devices():
    if not (DATA / "devices.json").exists():
        pytest.fail(f"shared recordings not found at {DATA}; set YUJING_OPENEEW_DIR")
    return load_devices(DATA / "devices.json")


@pytest.fixture(scope="module")
def packets(devices):
    return list(iter_packets(DATA / "events" / EVENT, devices, Rejects()))


def run(devices, packets):
    eng = Engine(devices)
    out = []
    for p in packets:
        out += eng.feed(p)
    out += eng.flush()
    return out, eng


def test_detects_and_is_deterministic(devices, packets):
    a, _ = run(devices, packets)
    b, _ = run(devices, packets)
    assert a and a == b
    assert a[0].version == 1
    ids = {u.event_id for u in a}
    assert len(ids) == 1
    versions = [u.version for u in a]
    assert versions == list(range(1, len(a) + 1))


def test_never_uses_a_packet_before_it_arrived(devices, packets):
    """Cut the stream at several times T: everything the full replay issued up to T must be
    issued, identically, from the packets that had arrived by T. An engine that peeked
    ahead would differ. (The cut run may say more, all in its last step: at the cut it
    flushes a step that the full run closes later, with more packets.)"""
    full, _ = run(devices, packets)
    assert full
    first = full[0].issued_at_s
    for cut in (first - 0.5, first, first + 3.0, first + 20.0):
        prefix = [p for p in packets if p.arrival_time_s <= cut]
        got, eng = run(devices, prefix)
        assert eng.clock_s <= cut
        want = [u for u in full if u.issued_at_s <= cut]
        assert got[: len(want)] == want, f"cut at {cut - first:+.1f} s"
        # anything more comes from that last flushed step alone
        assert all(u.issued_at_s == got[-1].issued_at_s for u in got[len(want) :])
        # ... stamped when that step closes (its timer), at most one step after the cut
        assert all(u.issued_at_s <= cut + eng.step_s for u in got)


def test_bad_packets_are_counted_and_do_not_stop_the_engine(devices, packets):
    good, _ = run(devices, packets)
    bad = []
    for i, p in enumerate(packets):
        bad.append(p)
        if i % 97 == 5:  # exact duplicate
            bad.append(p)
        if i % 211 == 7:  # unknown device
            bad.append(msgspec.structs.replace(p, device_id="nope"))
        if i % 331 == 9:  # NaN sample
            bad.append(msgspec.structs.replace(p, x_gal=[math.nan] * len(p.x_gal)))
        if i % 401 == 11:  # axes of different lengths
            bad.append(msgspec.structs.replace(p, y_gal=p.y_gal[:-3]))
    eng = Engine(devices)
    out = []
    for p in bad:
        out += eng.feed(p)
    out += eng.flush()
    r = eng.rejects.by_reason()
    assert r.get("duplicate", 0) >= len(packets) // 97
    assert r.get("unknown_device", 0) == len(range(7, len(packets), 211))
    assert r.get("non_finite", 0) >= 1 and r.get("axis_length_mismatch", 0) >= 1
    # the event is still found with the same parameters
    assert [(u.event_id, round(u.magnitude, 1)) for u in out][-1] == [(u.event_id, round(u.magnitude, 1)) for u in good][-1]


def test_packet_before_engine_clock_is_rejected_not_used(devices, packets):
    eng = Engine(devices)
    for p in packets[:500]:
        eng.feed(p)
    late = msgspec.structs.replace(packets[100], arrival_time_s=packets[0].arrival_time_s - 10)
    assert eng.feed(late) == []
    assert eng.rejects.by_reason().get("late_arrival") == 1
    assert "arrival order" in eng.rejects.messages("late_arrival")[0]


def test_record_json_round_trip():
    p = Packet("d", 1.0, 1.2, 31.25, [0.1], [0.2], [0.3])
    assert msgspec.json.decode(msgspec.json.encode(p), type=Packet) == p
    assert json.loads(msgspec.json.encode(p))["sample_rate_hz"] == 31.25


def test_shared_data_is_not_in_the_repository():
    """Recordings are read from ../shared (or built into an ignored folder), never
    committed: only the small fixtures under tests/data may be JSONL files in git."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files", "*.jsonl"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    files = set(tracked) | {f for f in staged if f.endswith(".jsonl")}
    assert all(f.startswith("tests/data/") for f in files), sorted(f for f in files if not f.startswith("tests/data/"))


def _simulated_stream(phones=20_000, seed=0):
    from yujing import scenarios
    from yujing.sources.simulator import simulate

    return list(simulate(scenarios.get("luding2022"), phones, seed=seed).messages())


def test_feed_triggers_gives_what_feed_trigger_gives_one_by_one():
    """A batch of triggers (the service hands over what arrived within a step) is
    associated as the same triggers one by one: same updates, same events, same picks.
    The simulated quake's event grows past BATCH_PICKS, so the vectorised roles for a
    large event are exercised."""
    from yujing.associate import BATCH_PICKS
    from yujing.sources.simulator import HeartbeatBatch

    msgs = _simulated_stream()

    def go(batched):
        eng, out, run = Engine({}), [], []
        for m in msgs:
            if isinstance(m, HeartbeatBatch):
                if batched:
                    out += eng.feed_triggers(run)
                    run = []
                out += eng.feed_heartbeats(m.device_ids, m.latitude, m.longitude, m.arrival_time_s, ready=m.ready)
            elif batched:
                run.append(m)
            else:
                out += eng.feed_trigger(m)
        out += eng.feed_triggers(run)
        return out + eng.finish(), eng

    a, ea = go(False)
    b, eb = go(True)
    assert a and a == b
    assert max(len(e.picks) for e in ea.assoc.events) >= 2 * BATCH_PICKS
    assert [sorted(e.picks) for e in ea.assoc.events] == [sorted(e.picks) for e in eb.assoc.events]
    assert ea.n_triggers == eb.n_triggers


def test_a_late_trigger_in_a_batch_is_rejected_and_the_rest_goes_on():
    from yujing.records import Trigger

    def trig(dev, t, update=0):
        return Trigger(device_id=dev, latitude=29.6, longitude=102.1, onset_time_s=t - 1.0, issued_at_s=t,
                       window_s=1.0, pga_gal=5.0, pgv_cm_s=0.1, pd_cm=0.01, update=update)

    rej = Rejects()
    eng = Engine({}, rejects=rej)
    eng.feed_triggers([trig("a", 100.0), trig("b", 100.1)])
    eng.feed_triggers([trig("c", 100.05), trig("d", 100.2), trig("a", 100.3, update=1)])
    assert rej.by_reason() == {"late_arrival": 1}
    assert eng.n_triggers == 3 and eng.clock_s == 100.3


def test_a_trigger_whose_association_raises_costs_only_itself(monkeypatch):
    """A bug met by one trigger of a batch: that trigger is counted (engine_error) and
    every other trigger of the batch is still associated."""
    from yujing.associate import Associator
    from yujing.records import Trigger

    def trig(dev, t):
        return Trigger(device_id=dev, latitude=29.6, longitude=102.1, onset_time_s=t - 1.0, issued_at_s=t,
                       window_s=1.0, pga_gal=5.0, pgv_cm_s=0.1, pd_cm=0.01)

    real = Associator._add_first

    def flaky(self, t, now_s, codes, k):
        if t.device_id == "bad":
            raise RuntimeError("boom")
        return real(self, t, now_s, codes, k)

    monkeypatch.setattr(Associator, "_add_first", flaky)
    rej = Rejects()
    eng = Engine({}, rejects=rej)
    eng.feed_triggers([trig("a", 100.0), trig("bad", 100.01), trig("b", 100.02)])
    assert rej.by_reason() == {"engine_error": 1}
    assert {p.device_id for p in eng.assoc.pool} == {"a", "b"}
