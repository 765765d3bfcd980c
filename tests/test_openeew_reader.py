"""OpenEEW reader: validation of every line, arrival-order merge, real-data replay."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from yujing.records import Device
from yujing.rejects import Rejects
from yujing.sources import openeew
from yujing.sources.openeew import iter_event_dirs, iter_packets, load_devices

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("YUJING_OPENEEW_DIR", REPO / "../shared/data/openeew"))
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "events").is_dir(), reason=f"OpenEEW data not found at {DATA_DIR}"
)


def wire(
    dev: str, device_t: float, cloud_t: float, /, n: int = 4, sr: float = 31.25, **over
) -> str:
    """One JSON line as a device sends it; ``over`` replaces or (value None) drops fields."""
    obj = {
        "country_code": "mx",
        "device_id": dev,
        "x": [0.1 * i for i in range(n)],
        "y": [0.2 * i for i in range(n)],
        "z": [-0.3 * i for i in range(n)],
        "device_t": device_t,
        "cloud_t": cloud_t,
        "sr": sr,
    }
    for key, value in over.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    return json.dumps(obj)


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


DEVICES = {
    d: Device(d, 16.0 + i, -99.0 + i) for i, d in enumerate(["A01", "B02", "C03"])
}


@pytest.fixture()
def event(tmp_path: Path) -> Path:
    """Three device folders (B02 with two files) plus one unknown device, with bad lines."""
    ev = tmp_path / "events" / "2020_1_1"
    write(
        ev / "A01" / "00.jsonl",
        [
            wire("A01", 100.0, 100.1),  # 1 ok
            wire("A01", 101.0, 101.4),  # 2 ok
            '{"country_code": "mx", "device_id": "A01", "x": [0.1, 0.2',  # 3 truncated
            wire("A01", 102.0, 102.1).replace('"x": [0.0', '"x": [NaN'),  # 4 NaN sample
            wire("A01", 104.0, 104.2),  # 5 ok, arrives before line 6
            wire("A01", 103.0, 103.9),  # 6 ok, a line late in the file: reordered
            wire("A01", 105.0, 105.1, y=None),  # 7 missing axis
            "",  # 8 blank: skipped, not counted
            wire("A01", 106.0, 106.1, z=[]),  # 9 empty axis
        ],
    )
    write(
        ev / "B02" / "00.jsonl",
        [
            wire("B02", 100.0, 100.3),  # 1 ok
            wire("B02", 101.0, 101.2, device_t="101.0"),  # 2 string time
            wire("B02", 102.0, 102.2, x=[1.0, 2.0]),  # 3 axes of different length
            wire("B02", 103.0, 103.2, sr=0),  # 4 bad sample rate
            wire("B02", 104.0, 104.2, sr=2000.0),  # 5 bad sample rate
            wire("B02", 105.0, 105.2, cloud_t=None),  # 6 missing field
            wire("B02", 106.0, 106.2).replace("106.2", "1e999"),  # 7 overflows to inf
            wire("B02", 107.0, 107.2, n=10, sr=100.0),  # 8 ok, 100 Hz
        ],
    )
    write(
        ev / "B02" / "01.jsonl",
        [
            wire("B02", 108.0, 108.2, n=25, sr=125),  # 1 ok, 125 Hz, int rate
            wire("B02", 109.0, 109.2, x=[1, 2, 3, 4]),  # 2 ok: ints are fine for floats
        ],
    )
    write(
        ev / "C03" / "00.jsonl",
        [
            wire("C03", 100.0, 100.2),  # 1 ok
            wire("A01", 101.0, 101.3),  # 2 another device's line in C03's folder
            wire("C03", 101.0, 101.1, x=[0.1, None, 0.2, 0.3]),  # 3 null sample
            "[1, 2, 3]",  # 4 JSON, but not an object
            "garbage",  # 5
        ],
    )
    write(ev / "ZZZ" / "00.jsonl", [wire("ZZZ", 100.0, 100.15)])
    return ev


def test_counts_every_bad_line_and_keeps_going(event: Path) -> None:
    rejects = Rejects()
    packets = list(iter_packets(event, DEVICES, rejects))

    assert rejects.by_reason() == {
        "corrupt_json": 2,
        "missing_axis": 2,
        "bad_type": 3,
        "bad_sample_rate": 2,
        "non_finite": 2,
        "axis_length_mismatch": 1,
        "missing_field": 1,
        "device_mismatch": 1,
        "unknown_device": 1,
    }
    assert rejects.total == 15
    assert rejects.notes == {}
    assert [(p.device_id, p.device_time_s) for p in packets] == [
        ("A01", 100.0),
        ("C03", 100.0),
        ("B02", 100.0),
        ("A01", 101.0),
        ("A01", 104.0 - 1.0),  # line 6 arrived (cloud_t) before line 5
        ("A01", 104.0),
        ("B02", 107.0),
        ("B02", 108.0),
        ("B02", 109.0),
    ]


def test_messages_say_file_line_and_fault(event: Path) -> None:
    rejects = Rejects()
    list(iter_packets(event, DEVICES, rejects))
    a01 = str(event / "A01" / "00.jsonl")
    b02 = str(event / "B02" / "00.jsonl")
    c03 = str(event / "C03" / "00.jsonl")

    assert rejects.messages("corrupt_json")[0].startswith(f"{a01}:3: not valid JSON")
    assert rejects.messages("corrupt_json")[1].startswith(f"{c03}:5:")
    nan, inf = rejects.messages("non_finite")
    assert nan == f"{a01}:4: NaN or infinity in x"
    assert inf.startswith(f"{b02}:7:") and "cloud_t" in inf
    assert rejects.messages("missing_axis") == [
        f"{a01}:7: axis y missing or empty (device 'A01')",
        f"{a01}:9: axis z missing or empty (device 'A01')",
    ]
    bad_type = rejects.messages("bad_type")
    assert bad_type[0].startswith(f"{b02}:2:") and "device_t" in bad_type[0]
    assert bad_type[1].startswith(f"{c03}:3:") and "null" in bad_type[1]
    assert bad_type[2].startswith(f"{c03}:4:") and "object" in bad_type[2]
    assert rejects.messages("axis_length_mismatch") == [
        f"{b02}:3: axes hold x=2, y=4, z=4 samples (device 'B02')"
    ]
    rates = rejects.messages("bad_sample_rate")
    assert rates[0].startswith(f"{b02}:4:") and "sr=0.0 Hz" in rates[0]
    assert rates[1].startswith(f"{b02}:5:") and "sr=2000.0 Hz" in rates[1]
    assert rejects.messages("missing_field")[0].startswith(f"{b02}:6:")
    assert "cloud_t" in rejects.messages("missing_field")[0]
    assert rejects.messages("device_mismatch") == [
        f"{c03}:2: line says device_id 'A01' but lies in folder 'C03'"
    ]
    assert rejects.messages("unknown_device") == [
        f"{event / 'ZZZ' / '00.jsonl'}:1: device_id 'ZZZ' is not in the device table"
    ]
    summary = "\n".join(rejects.summary_lines())
    assert "rejected: 15" in summary and "corrupt_json: 2" in summary


def test_packet_fields_keep_units_and_rates(event: Path) -> None:
    packets = list(iter_packets(event, DEVICES, Rejects()))
    by_time = {(p.device_id, p.device_time_s): p for p in packets}
    first = by_time[("A01", 100.0)]
    assert first.arrival_time_s == 100.1
    assert first.sample_rate_hz == 31.25
    assert first.x_gal == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert first.z_gal == pytest.approx([0.0, -0.3, -0.6, -0.9])
    assert len(by_time[("B02", 107.0)].x_gal) == 10
    assert by_time[("B02", 107.0)].sample_rate_hz == 100.0
    assert len(by_time[("B02", 108.0)].y_gal) == 25
    assert by_time[("B02", 108.0)].sample_rate_hz == 125.0
    assert by_time[("B02", 109.0)].x_gal == [1.0, 2.0, 3.0, 4.0]


def test_line_later_than_reorder_buffer_is_out_of_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openeew, "REORDER_LINES", 2)
    ev = tmp_path / "ev"
    arrivals = [10.0, 11.0, 12.0, 13.0, 9.5, 14.0, 12.5, 15.0]
    write(ev / "A01" / "00.jsonl", [wire("A01", c - 0.1, c) for c in arrivals])
    rejects = Rejects()
    got = [p.arrival_time_s for p in iter_packets(ev, DEVICES, rejects)]

    # With a buffer of 2, 11.0 has been passed on when 9.5 is read: too late to re-sort.
    # 12.5 is read while 13.0 is still buffered, so it goes back in its place.
    assert got == [10.0, 11.0, 12.0, 12.5, 13.0, 14.0, 15.0]
    assert rejects.by_reason() == {"out_of_order": 1}
    (msg,) = rejects.messages("out_of_order")
    assert msg.startswith(f"{ev / 'A01' / '00.jsonl'}:5: cloud_t 9.500 is 1.500 s older")


def test_equal_arrival_times_follow_folder_then_file_then_line(tmp_path: Path) -> None:
    ev = tmp_path / "ev"
    write(ev / "B02" / "00.jsonl", [wire("B02", 1.0, 5.0), wire("B02", 2.0, 5.0)])
    write(ev / "A01" / "01.jsonl", [wire("A01", 3.0, 5.0)])
    write(ev / "A01" / "00.jsonl", [wire("A01", 4.0, 5.0)])
    got = [(p.device_id, p.device_time_s) for p in iter_packets(ev, DEVICES, Rejects())]
    assert got == [("A01", 4.0), ("A01", 3.0), ("B02", 1.0), ("B02", 2.0)]


def test_load_devices_reports_bad_tables(tmp_path: Path) -> None:
    good = tmp_path / "devices.json"
    good.write_text(json.dumps([{"device_id": "001", "latitude": 15.67, "longitude": -96.5}]))
    assert load_devices(good) == {"001": Device("001", 15.67, -96.5)}

    bad = tmp_path / "bad.json"
    bad.write_text('[{"device_id": "001", "latitude": "north"}]')
    with pytest.raises(ValueError, match=r"bad\.json.*latitude"):
        load_devices(bad)
    bad.write_text("[{")
    with pytest.raises(ValueError, match=r"bad\.json is not a JSON list"):
        load_devices(bad)
    bad.write_text(json.dumps([{"device_id": "7", "latitude": 1, "longitude": 2}] * 2))
    with pytest.raises(ValueError, match="repeats device_id '7'"):
        load_devices(bad)
    bad.write_text(json.dumps([{"device_id": "7", "latitude": 91, "longitude": 2}]))
    with pytest.raises(ValueError, match="latitude 91.0 outside"):
        load_devices(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_devices(tmp_path / "missing.json")


def test_event_dirs_sorted(tmp_path: Path) -> None:
    for name in ["2020_1_29", "2018_2_16", "2019_3_9"]:
        (tmp_path / "events" / name).mkdir(parents=True)
    (tmp_path / "events" / "notes.txt").write_text("not an event")
    assert [p.name for p in iter_event_dirs(tmp_path)] == ["2018_2_16", "2019_3_9", "2020_1_29"]


@needs_data
def test_real_event_in_arrival_order_and_complete() -> None:
    devices = load_devices(DATA_DIR / "devices.json")
    assert len(devices) == 30
    event = DATA_DIR / "events" / "2018_2_16"
    files = sorted(event.glob("*/*.jsonl"))
    assert all(len(list(f.parent.glob("*.jsonl"))) == 2 for f in files)
    n_lines = sum(1 for f in files for _ in f.open("rb"))

    rejects = Rejects()
    arrivals = []
    seen = set()
    for p in iter_packets(event, devices, rejects):
        arrivals.append(p.arrival_time_s)
        seen.add(p.device_id)
    assert rejects.total == 0, rejects.summary_lines()
    assert len(arrivals) == n_lines
    assert all(a <= b for a, b in zip(arrivals, arrivals[1:]))
    assert seen == {f.parent.name for f in files}


@needs_data
def test_all_events_listed() -> None:
    names = [p.name for p in iter_event_dirs(DATA_DIR)]
    assert len(names) == 11
    assert names == sorted(names)
