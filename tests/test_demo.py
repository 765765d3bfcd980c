"""`yujing demo`: the simulated phone network through the engine and the alert path."""

from __future__ import annotations

import json
import math
import re

import pytest

from yujing import demo
from yujing.cli import main


@pytest.fixture(scope="module")
def luding():
    # fewer phones than the default 100,000 to keep the suite fast; same code path
    return demo.run("luding2022", 20_000, seed=3)


def test_the_quake_is_found_and_alerted(luding):
    s = luding.summary()
    assert s["event_id"] is not None
    assert s["false_events"] == 0
    assert s["location_error_km"] < 15.0
    assert abs(s["final_magnitude"] - 6.6) <= 0.5
    # the first alert follows the first P triggers: after origin, within seconds
    assert 2.0 < s["first_alert_s"] < 15.0
    assert s["first_update_s"] <= s["first_alert_s"]


def test_warning_times_follow_the_s_wave(luding):
    s = luding.summary()
    by_name = {c.name: c for c in luding.cities}
    chengdu = by_name["Chengdu"]
    assert chengdu.tier in ("be_aware", "take_action")
    # warning = S arrival - (first alert covering the city + network delay)
    delay = luding.net.settings.delay_median_s
    expect = chengdu.s_after_origin_s - chengdu.alert_after_origin_s - delay
    assert chengdu.warning_s == pytest.approx(expect)
    assert s["city_warning_s"]["Chengdu"] == pytest.approx(chengdu.warning_s, abs=1e-3)
    # a city nearer the epicentre gets less warning than a farther one
    assert by_name["Kangding"].warning_s < chengdu.warning_s
    assert sum(s["phones_per_tier"].values()) <= s["phones_online"]
    assert s["phones_per_tier"]["take_action"] > 0


def test_summary_has_the_issue_keys_and_is_json(luding):
    s = luding.summary()
    for key in ("phones", "first_alert_s", "final_magnitude", "location_error_km", "phones_per_tier", "city_warning_s"):
        assert key in s
    assert s["phones"] == 20_000
    json.dumps(s, allow_nan=False)


def test_the_report_works_offline(luding):
    page = demo.report_html(luding)
    assert page.startswith("<!doctype html>")
    assert "<svg" in page and "<polygon" in page
    # nothing fetched from the network: no external scripts, styles, images or fonts
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)
    assert "Chengdu" in page
    assert len(page) < 2_000_000


def test_cli_writes_report_and_json(tmp_path):
    report = tmp_path / "r.html"
    js = tmp_path / "s.json"
    rc = main(["demo", "--phones", "5000", "--seed", "1", "--report", str(report), "--json", str(js), "-q"])
    assert rc == 0
    s = json.loads(js.read_text())
    assert s["phones"] == 5000 and s["scenario"] == "luding2022"
    assert report.stat().st_size > 10_000
    assert math.isfinite(s["first_alert_s"])


def test_cli_rejects_unknown_scenario(capsys):
    assert main(["demo", "--scenario", "atlantis", "-q"]) == 2
    assert "unknown scenario" in capsys.readouterr().err


def test_timeline_orders_trigger_detection_and_alert(luding):
    texts = [(t, text) for t, text in luding.timeline]
    first_trig = next(t for t, x in texts if x.startswith("first trigger from the quake"))
    detected = next(t for t, x in texts if " detected: " in x)
    alert = next(t for t, x in texts if x.startswith("ALERT alert"))
    assert 0.0 < first_trig <= detected <= alert
    assert alert == pytest.approx(luding.first_alert_s)
