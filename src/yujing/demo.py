"""``yujing demo``: a historical earthquake felt by a simulated phone network, end to end.

The scenario simulator (:mod:`yujing.sources.simulator`) produces what a server would
receive from ``n_phones`` phones — device triggers (after the on-device classifier), their
amplitude updates, heartbeats — in arrival order. They go through the same
:class:`~yujing.engine.Engine` and :class:`~yujing.alerting.AlertPolicy` as a live server, in
simulated time; nothing is read from the truth except to score the result afterwards.

Scoring against the truth (kept by the simulator, never sent to the engine):

* ``first_alert_s``: issue time of the first alert message of the event, after origin;
* warning time of a phone or a city: true S arrival there minus the moment the first alert
  covering its area reached it (issue time plus the network delay; the median of the
  simulator's delay model, ``delay_median_s``); negative means the shaking came first;
* phones per tier: online phones in the cells of each tier of the final alert;
* ``location_error_km``: final epicentre against the scenario's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h3
import numpy as np

from . import scenarios
from .alerting import TIERS, AlertPolicy
from .engine import Engine
from .geo import distance_km
from .records import Alert, EventUpdate
from .settings import Settings
from .shaking import forecast_site
from .sources.simulator import KIND_P, KIND_S, HeartbeatBatch, SimulatedNetwork, simulate

DEFAULT_SCENARIO = "luding2022"
DEFAULT_PHONES = 100_000
#: an event is the scenario's quake when its final epicentre is this close to the truth
MATCH_KM = 100.0
MATCH_S = 30.0


@dataclass
class CityResult:
    name: str
    latitude: float
    longitude: float
    distance_km: float
    s_after_origin_s: float
    mmi_true: float  # median forecast at the true source (the simulator's model)
    mmi_forecast: float  # what a phone there computes from the final alert
    tier: str  # tier of the city's cell in the final alert ("" = not alerted)
    alert_after_origin_s: float  # first alert covering the city (nan = none)
    warning_s: float  # S arrival minus alert delivery (nan = not alerted; < 0 late)


@dataclass
class DemoResult:
    net: SimulatedNetwork
    updates: list[EventUpdate]
    alerts: list[Alert]
    event_id: str | None  # the engine's event for the scenario quake (None: missed)
    false_events: list[str]
    cities: list[CityResult]
    phones_per_tier: dict[str, int]
    phone_warning: dict[str, dict]  # tier -> median / p10 / late fraction of phones' warning
    timings: dict[str, float]
    engine_stats: dict[str, int]
    timeline: list[tuple[float, str]] = field(default_factory=list)

    # ------------------------------------------------------------------ summary
    @property
    def origin_time_s(self) -> float:
        return self.net.scenario.origin_time_s

    def event_updates(self) -> list[EventUpdate]:
        return [u for u in self.updates if u.event_id == self.event_id]

    def event_alerts(self) -> list[Alert]:
        return [a for a in self.alerts if a.event_id == self.event_id]

    @property
    def first_alert_s(self) -> float:
        al = self.event_alerts()
        return al[0].issued_at_s - self.origin_time_s if al else math.nan

    @property
    def first_update_s(self) -> float:
        up = self.event_updates()
        return up[0].issued_at_s - self.origin_time_s if up else math.nan

    @property
    def final(self) -> EventUpdate | None:
        up = [u for u in self.event_updates() if not u.retracted]
        return up[-1] if up else None

    def summary(self) -> dict:
        """The ``--json`` summary (keys named in issue 4)."""
        sc = self.net.scenario
        fin = self.final
        loc_err = (
            float(distance_km(sc.latitude, sc.longitude, fin.latitude, fin.longitude)) if fin is not None else math.nan
        )
        trig = self.net.summary()
        return _clean(
            {
                "scenario": sc.key,
                "name": sc.name,
                "seed": self.net.seed,
                "phones": self.net.n_phones,
                "phones_online": trig["online"],
                "phones_triggered": trig["triggered_p"] + trig["triggered_s"],
                "false_triggers": trig["false_triggers"],
                "true_magnitude": sc.magnitude,
                "event_id": self.event_id,
                "first_update_s": self.first_update_s,
                "first_alert_s": self.first_alert_s,
                "first_alert_magnitude": self.event_alerts()[0].magnitude if self.event_alerts() else math.nan,
                "final_magnitude": fin.magnitude if fin is not None else math.nan,
                "location_error_km": loc_err,
                "final_depth_km": fin.depth_km if fin is not None else math.nan,
                "event_versions": len(self.event_updates()),
                "alert_messages": len(self.event_alerts()),
                "false_events": len(self.false_events),
                "false_alert_messages": sum(1 for a in self.alerts if a.event_id in self.false_events),
                "phones_per_tier": self.phones_per_tier,
                "phone_warning_s": self.phone_warning,
                "city_warning_s": {c.name: c.warning_s for c in self.cities},
                "city_tier": {c.name: c.tier for c in self.cities},
                "timings_s": self.timings,
                "engine": self.engine_stats,
            }
        )


def _clean(x):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else round(float(x), 3)
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---------------------------------------------------------------------- running


def run(
    scenario: str | scenarios.Scenario = DEFAULT_SCENARIO,
    n_phones: int = DEFAULT_PHONES,
    seed: int = 0,
    on_line: Callable[[float, str], None] | None = None,
    settings: Settings | None = None,
) -> DemoResult:
    """Simulate the scenario and run it through the engine and the alert policy.

    ``on_line(t_after_origin_s, text)`` is called for each timeline entry as it happens in
    simulated time (first trigger, detection, alerts, magnitude changes, S arrivals at the
    scenario's cities)."""
    sc = scenarios.get(scenario) if isinstance(scenario, str) else scenario
    t_start = time.perf_counter()
    net = simulate(sc, n_phones, seed=seed)
    t_sim = time.perf_counter() - t_start
    ot = sc.origin_time_s
    timeline: list[tuple[float, str]] = []

    def say(t_abs: float, text: str):
        timeline.append((t_abs - ot, text))
        if on_line is not None:
            on_line(t_abs - ot, text)

    city_info = net.cities()
    city_s = sorted(((ot + c["s_after_origin_s"], c["name"]) for c in city_info))
    next_city = 0

    eng = Engine({}, settings)
    policy = AlertPolicy((settings or Settings()).alert)
    updates: list[EventUpdate] = []
    alerts: list[Alert] = []
    t_engine = t_alert = 0.0
    first_trig = False
    last_said_m: dict[str, float] = {}
    n_trig_msgs = n_hb = 0

    def handle(out: list[EventUpdate]):
        nonlocal t_alert
        for u in out:
            updates.append(u)
            a0 = time.perf_counter()
            new = policy.on_update(u)
            t_alert += time.perf_counter() - a0
            alerts.extend(new)
            if u.retracted:
                say(u.issued_at_s, f"event {u.event_id} retracted")
            elif u.version == 1:
                say(u.issued_at_s, f"event {u.event_id} detected: M{u.magnitude:.1f} from {u.n_devices} phones")
                last_said_m[u.event_id] = u.magnitude
            elif abs(u.magnitude - last_said_m.get(u.event_id, u.magnitude)) >= 0.3:
                say(u.issued_at_s, f"  M{u.magnitude:.1f} ({u.n_devices} phones)")
                last_said_m[u.event_id] = u.magnitude
            say_alerts(new)

    def say_alerts(new: list[Alert]):
        for a in new:
            n_cells = {t.name: len(h3.uncompact_cells(list(t.cells), a.h3_resolution)) for t in a.tiers}
            tiers = ", ".join(f"{k} {v:,} cells" for k, v in n_cells.items()) or "no cells"
            say(a.issued_at_s, f"ALERT {a.msg_type} v{a.version} M{a.magnitude:.1f}: {tiers}")

    next_policy_tick = -math.inf

    def policy_tick(t: float):
        # as a live service does (about once a second): areas fall once a lower
        # estimate has held, whether or not a new estimate comes
        nonlocal next_policy_tick, t_alert
        if t >= next_policy_tick:
            next_policy_tick = t + 1.0
            a0 = time.perf_counter()
            new = policy.tick(t)
            t_alert += time.perf_counter() - a0
            alerts.extend(new)
            say_alerts(new)

    for m in net.messages():
        t = m.arrival_time_s if isinstance(m, HeartbeatBatch) else m.issued_at_s
        while next_city < len(city_s) and city_s[next_city][0] <= t:
            say(city_s[next_city][0], f"S wave reaches {city_s[next_city][1]}")
            next_city += 1
        e0 = time.perf_counter()
        if isinstance(m, HeartbeatBatch):
            out = eng.feed_heartbeats(m.device_ids, m.latitude, m.longitude, m.arrival_time_s, ready=m.ready)
            n_hb += len(m)
        else:
            # messages() yields trigger messages in the order of net.msg_*: the truth
            # about this one (for the timeline only; the engine gets the record alone)
            row = int(net.msg_trigger[n_trig_msgs])
            kind = int(net.trig_kind[row])
            if not first_trig and m.update == 0 and kind in (KIND_P, KIND_S):
                first_trig = True
                ph = int(net.trig_phone[row])
                wave = "P" if kind == KIND_P else "S"
                say(m.issued_at_s, f"first trigger from the quake arrives ({wave} wave, a phone {net.epicentral_km[ph]:.0f} km from the epicentre)")
            out = eng.feed_trigger(m)
            n_trig_msgs += 1
        t_engine += time.perf_counter() - e0
        handle(out)
        policy_tick(t)
    e0 = time.perf_counter()
    out = eng.finish()
    t_engine += time.perf_counter() - e0
    handle(out)
    while next_city < len(city_s):
        say(city_s[next_city][0], f"S wave reaches {city_s[next_city][1]}")
        next_city += 1

    event_id, false_events = _match(updates, sc)
    cities, per_tier, phone_warn = _warnings(net, city_info, policy, event_id, alerts)
    timings = {
        "simulate": t_sim,
        "engine": t_engine,  # the alert policy runs in handle(), outside this timer
        "alerts": t_alert,
        "total": time.perf_counter() - t_start,
    }
    stats = {
        "trigger_messages": n_trig_msgs,
        "heartbeats": n_hb,
        "rejected": eng.rejects.total,
    }
    timeline.sort(key=lambda x: x[0])
    return DemoResult(
        net=net,
        updates=updates,
        alerts=alerts,
        event_id=event_id,
        false_events=false_events,
        cities=cities,
        phones_per_tier=per_tier,
        phone_warning=phone_warn,
        timings=timings,
        engine_stats=stats,
        timeline=timeline,
    )


def _match(updates: list[EventUpdate], sc) -> tuple[str | None, list[str]]:
    """The event for the scenario quake (final epicentre nearest the truth, within
    MATCH_KM and MATCH_S) and the others (false events)."""
    final: dict[str, EventUpdate] = {}
    for u in updates:
        final[u.event_id] = u
    best, best_d = None, math.inf
    for eid, u in final.items():
        if u.retracted:
            continue
        d = float(distance_km(sc.latitude, sc.longitude, u.latitude, u.longitude))
        if d <= MATCH_KM and abs(u.origin_time_s - sc.origin_time_s) <= MATCH_S and d < best_d:
            best, best_d = eid, d
    return best, [e for e in final if e != best]


def _warnings(net: SimulatedNetwork, city_info: list[dict], policy: AlertPolicy, event_id: str | None, alerts: list[Alert]):
    """Cities' and phones' tiers and warning times from the alert policy's record of when
    each cell was first alerted (against the true S arrivals)."""
    sc = net.scenario
    delay = net.settings.delay_median_s
    res = policy.s.h3_resolution
    cell_alert = policy.first_alert_times(event_id) if event_id else {}
    final_alert = next((a for a in reversed(alerts) if a.event_id == event_id), None)
    cities = []
    for c in city_info:
        cell = h3.latlng_to_cell(c["latitude"], c["longitude"], res)
        tier_i, t_first = cell_alert.get(cell, (-1, math.nan))
        mmi_f = math.nan
        if final_alert is not None and final_alert.msg_type != "cancel":
            mmi_f = float(
                forecast_site(final_alert.latitude, final_alert.longitude, final_alert.depth_km, final_alert.magnitude,
                              c["latitude"], c["longitude"], policy.s.vs30_m_s, final_alert.gmpe).mmi
            )
        ts = sc.origin_time_s + c["s_after_origin_s"]
        cities.append(
            CityResult(
                name=c["name"],
                latitude=c["latitude"],
                longitude=c["longitude"],
                distance_km=c["epicentral_km"],
                s_after_origin_s=c["s_after_origin_s"],
                mmi_true=c["mmi"],
                mmi_forecast=mmi_f,
                tier=TIERS[tier_i] if tier_i >= 0 else "",
                alert_after_origin_s=t_first - sc.origin_time_s,
                warning_s=ts - (t_first + delay) if math.isfinite(t_first) else math.nan,
            )
        )

    # phones: online ones, by the tier of their cell at the alert resolution
    per_tier = {name: 0 for name in TIERS}
    warn: dict[str, dict] = {}
    if cell_alert:
        online = np.flatnonzero(net.online)
        ucell, inv = np.unique(net.cell[online], return_inverse=True)
        parent = [h3.cell_to_parent(h3.int_to_str(int(c)), res) for c in ucell.tolist()]
        tier_u = np.array([cell_alert.get(p, (-1, math.nan))[0] for p in parent])
        first_u = np.array([cell_alert.get(p, (-1, math.nan))[1] for p in parent], dtype=float)
        tier_p = tier_u[inv]
        first_p = first_u[inv]
        w = net.s_arrival_s[online] - (first_p + delay)
        for i, name in enumerate(TIERS):
            m = tier_p == i
            per_tier[name] = int(m.sum())
            if m.any():
                wi = w[m]
                warn[name] = {
                    "median": float(np.median(wi)),
                    "p10": float(np.percentile(wi, 10)),
                    "late_fraction": float(np.mean(wi < 0)),
                }
    return cities, per_tier, warn


# ---------------------------------------------------------------------- report


def report_html(result: DemoResult) -> str:
    """The offline HTML report of a demo run (see :mod:`yujing.report`)."""
    from .report import CityWarning, ReportData, render

    net = result.net
    sc = net.scenario
    first = net.msg_update == 0
    rows = net.msg_trigger[first]
    s = result.summary()
    shown = {
        "phones (online)": f"{s['phones']:,} ({s['phones_online']:,})",
        "phones that triggered / false triggers": f"{s['phones_triggered']:,} / {s['false_triggers']:,}",
        "first alert after origin": _fmt_s(s["first_alert_s"]),
        "first alert magnitude": s["first_alert_magnitude"],
        "final magnitude (true)": f"{s['final_magnitude']} ({sc.magnitude})",
        "final epicentre error": _fmt_km(s["location_error_km"]),
        "phones per tier": ", ".join(f"{k}: {v:,}" for k, v in s["phones_per_tier"].items()),
        "false events / alert messages": f"{s['false_events']} / {s['false_alert_messages']}",
        "compute (simulate / engine / alerts)": " / ".join(
            f"{result.timings[k]:.1f} s" for k in ("simulate", "engine", "alerts")
        ),
    }
    data = ReportData(
        title=f"yujing demo: {sc.name}, {net.n_phones:,} phones (seed {net.seed})",
        true_latitude=sc.latitude,
        true_longitude=sc.longitude,
        true_depth_km=sc.depth_km,
        true_magnitude=sc.magnitude,
        origin_time_s=sc.origin_time_s,
        updates=[u for u in result.event_updates() if not u.retracted],
        alerts=result.event_alerts(),
        trigger_lat=net.cell_latitude[net.trig_phone[rows]],
        trigger_lon=net.cell_longitude[net.trig_phone[rows]],
        trigger_onset_s=net.trig_onset_s[rows],
        trigger_arrival_s=net.msg_arrival_s[first],
        cities=[
            CityWarning(
                name=c.name,
                latitude=c.latitude,
                longitude=c.longitude,
                distance_km=c.distance_km,
                tier=c.tier,
                mmi=c.mmi_forecast,
                warning_s=c.warning_s,
            )
            for c in result.cities
        ],
        summary=shown,
    )
    return render(data)


def _fmt_s(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1f} s"


def _fmt_km(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1f} km"
