"""One table of the engine's constants, with units and where each value comes from.

The same table feeds the code, the CLI (``yujing settings`` prints it as JSON,
``yujing settings --markdown`` as the table in docs/settings.md, which a test keeps equal)
and the docs. Values are physics or published practice, not fitted to single events of the
development set; docs/constants.md says more about the choices.
"""

from __future__ import annotations

from typing import Annotated

import msgspec


def _d(text: str):
    return msgspec.Meta(description=text)


class PickerSettings(msgspec.Struct, frozen=True, kw_only=True):
    pick_highpass_hz: Annotated[float, _d(
        "High-pass corner of the trigger channel: removes microseism and building sway and "
        "keeps the band where local and regional P energy stands above MEMS noise.")] = 1.5
    sta_s: Annotated[float, _d(
        "Short-term window of the recursive STA/LTA (Allen 1978; EEW pickers use 0.2-1 s).")] = 0.5
    lta_s: Annotated[float, _d("Long-term window of the recursive STA/LTA (tens of seconds of noise).")] = 30.0
    trigger_ratio: Annotated[float, _d("STA/LTA ratio that declares a trigger (usual range 3-5).")] = 4.0
    rearm_ratio: Annotated[float, _d("STA/LTA ratio below which a triggered device re-arms.")] = 1.5
    warmup_s: Annotated[float, _d(
        "Seconds after a stream (re)starts before the device may trigger: the LTA must "
        "first know the noise.")] = 15.0
    onset_lookback_s: Annotated[float, _d(
        "Window before the trigger sample searched for the onset (AIC picker, Maeda 1985).")] = 3.0
    amplitude_highpass_hz: Annotated[float, _d(
        "High-pass corner for PGA, PGV, Pd and the Wood-Anderson channel: 0.075 Hz as in "
        "Wu & Kanamori (2005) and Kuyuk & Allen (2013).")] = 0.075
    track_s: Annotated[float, _d(
        "How long a trigger keeps sending amplitude updates (covers S and surface waves of "
        "an M7+ at 400 km).")] = 90.0
    pd_max_window_s: Annotated[float, _d(
        "Longest P window for Pd after the onset: 3 s, the window of the Wu & Zhao (2006) "
        "scaling the engine sizes by (a 9 s Pd read with it overstated the demo's M6.6 as "
        "M7.3; window-dependent scalings, Colombelli et al. 2012, are not used).")] = 3.0
    buffer_samples: Annotated[int, _d("Samples kept per device for onset refinement and amplitude look-back.")] = 1024
    max_tracks_per_device: Annotated[int, _d(
        "Concurrent amplitude tracks per device, so that a false trigger cannot hide the real P.")] = 3


class AssociateSettings(msgspec.Struct, frozen=True, kw_only=True):
    min_devices: Annotated[int, _d("Triggered devices needed to announce an event (ElarmS/EPIC use 3-4).")] = 3
    min_site_separation_km: Annotated[float, _d(
        "Triggers closer together than this count as one site when counting devices for a "
        "new event: a slammed door, a truck or a crowd shaking one building (or many fake "
        "devices in one place) must not make an earthquake.")] = 3.0
    moveout_slack_s: Annotated[float, _d(
        "Two triggers can belong to one event only if their onsets differ by at most the P "
        "travel time between the two devices plus this slack (clock and picking error).")] = 2.0
    max_pair_distance_km: Annotated[float, _d("Longest distance between two devices paired in a new event.")] = 300.0
    max_rms_s: Annotated[float, _d("RMS P residual a located candidate must reach to be announced.")] = 1.5
    min_triggered_fraction: Annotated[float, _d(
        "Of the live devices able to detect that lie closer to a candidate's epicentre than "
        "its farthest P pick and that P should have reached, at least this fraction must have "
        "triggered. False triggers (phones picked up) are scattered: three of them around "
        "thousands of quiet phones are not an earthquake, while near a real quake most still "
        "phones trigger.")] = 0.25
    phone_report_delay_s: Annotated[float, _d(
        "How long after its P onset a phone's trigger arrives (the classifier's window "
        "after the onset, the agent's processing block, the network): a phone counts as "
        "silent only up to this long before the engine clock. Used until triggers have "
        "arrived; from then on the 80th percentile of the recent triggers' own delays "
        "(arrival - onset).")] = 2.5
    candidate_ttl_s: Annotated[float, _d("Unassociated triggers are forgotten after this long.")] = 60.0
    event_ttl_s: Annotated[float, _d("An event stops being updated this long after its origin time.")] = 240.0
    new_device_s: Annotated[float, _d(
        "A device that enrolled itself (POST /api/enrol without an operator key) less than "
        "this long before its trigger is new: its picks locate and size an event but do not "
        "count toward announcing it. A quake is felt by the phones that were there all day; "
        "a replayed or scripted one by fakes enrolled for the purpose. Devices enrol the "
        "next day's pseudonym during the day before, so a phone is never new at midnight. 0: "
        "no device is new (a network's first hours).")] = 6 * 3600.0
    min_established_share: Annotated[float, _d(
        "Of an event's P picks, at least this share must come from devices that are not new "
        "(and at least min_devices of them) before it is announced; after that, updates "
        "follow every pick.")] = 0.5


class LocateSettings(msgspec.Struct, frozen=True, kw_only=True):
    search_radius_km: Annotated[float, _d("Half-width of the epicentral search around the first triggers.")] = 400.0
    coarse_step_km: Annotated[float, _d("Step of the coarse epicentral grid.")] = 10.0
    fine_step_km: Annotated[float, _d("Step of the fine grid around the best coarse minima.")] = 2.0
    depths_km: Annotated[tuple[float, ...], _d(
        "Trial depths: crust, plate interface and intraslab depths of subduction zones.")] = (
        5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 80.0, 100.0)
    pick_sigma_s: Annotated[float, _d("Pick-time uncertainty that weights residuals.")] = 0.5
    silent_grace_s: Annotated[float, _d(
        "A streaming device closer to a trial epicentre than the farthest triggered one "
        "counts against it when P should have reached the device this long before the end "
        "of the data it has delivered and it has not triggered (ElarmS 'not-yet-arrived'). "
        "About the picker's trigger delay on a clear P (STA window 0.5 s).")] = 1.0
    first_device_prior_km: Annotated[float, _d(
        "Scale of the prior on the distance from the epicentre to the first-triggered device, "
        "cost (d/scale)^2. Three picks leave a curve of equally good solutions; this picks "
        "the part near the first device, as ElarmS' first-station start does. About the "
        "spacing of a sparse regional network.")] = 100.0
    depth_prior_typical_km: Annotated[float, _d(
        "Depth the locator settles on when the picks cannot tell crustal depths apart: the "
        "mild centre of the depth prior, which costs 0.5 chi-square units at "
        "depth_prior_free_km and less in between (0.056 at 10 and 20 km, 0.22 at 5 km). "
        "Quakes large enough to warn for nucleate near the base of the seismogenic crust, "
        "10-20 km (Sibson 1982), interface quakes deeper; EEW practice starts shallow "
        "(ElarmS/EPIC fix 8 km, JMA starts at 10 km). Midway between the trial depths 10 "
        "and 20 km, it leaves that choice to the picks.")] = 15.0
    depth_prior_free_km: Annotated[float, _d(
        "Down to this depth the prior adds only its mild centre. A few picks leave depth and "
        "origin time trading off (3-10 simulated phone picks of a 16 km quake scored 5-100 km "
        "within ~1.5 chi-square units), and without a prior the best trial depth was "
        "arbitrary, often 45-100 km, which lengthened every hypocentral distance and "
        "inflated the magnitude. Most damaging quakes are shallower than about 30 km.")] = 30.0
    depth_prior_scale_km: Annotated[float, _d(
        "Below depth_prior_free_km a trial depth d also costs ((d - free)/scale)^2 "
        "chi-square units, the units of the pick residuals: the whole prior is 0.75 at "
        "45 km, 1.5 at 60, 3.3 at 80, 5.9 at 100 (odds of ~1:20 against 100 km: M6+ "
        "hypocentres per km of depth are an order of magnitude rarer there than in the crust). Subduction interface quakes (15-50 km) stay cheap; "
        "intraslab depths (60-100 km) need picks that resolve them, as devices within about "
        "the depth of the epicentre do (a wrong shallow depth then costs tens of units)."),
        msgspec.Meta(gt=0)] = 30.0


class MagnitudeSettings(msgspec.Struct, frozen=True, kw_only=True):
    detection_snr: Annotated[float, _d(
        "An amplitude is signal when it exceeds this multiple of the largest value in the "
        "5 s of noise before the onset (a peak measure of noise, so 2 is already clear).")] = 2.0


class AlertSettings(msgspec.Struct, frozen=True, kw_only=True):
    min_magnitude: Annotated[float, _d(
        "No alert below this magnitude (damage and wide felt reports start around M4.5-5).")] = 4.5
    be_aware_mmi: Annotated[float, _d(
        "Forecast MMI from which a cell is told to be aware (Android's tiers: MMI 3-4).")] = 3.0
    take_action_mmi: Annotated[float, _d(
        "Forecast MMI from which a cell is told to take action (Android's tiers: MMI 5+).")] = 5.0
    h3_resolution: Annotated[int, _d(
        "H3 resolution of the alert cells, 5-7 (5: ~250 km^2, 6: ~36 km^2, 7: ~5 km^2).",
    ), msgspec.Meta(ge=5, le=7)] = 6
    update_magnitude_step: Annotated[float, _d("An update is sent when the magnitude moves this much.")] = 0.3
    vs30_m_s: Annotated[float, _d(
        "Vs30 assumed where no site grid is given (760 m/s: the NEHRP B/C boundary, rock).")] = 760.0


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    picker: PickerSettings = PickerSettings()
    associate: AssociateSettings = AssociateSettings()
    locate: LocateSettings = LocateSettings()
    magnitude: MagnitudeSettings = MagnitudeSettings()
    alert: AlertSettings = AlertSettings()


def _unit(name: str) -> str:
    for suffix, unit in (
        ("_m_s", "m/s"),
        ("_hz", "Hz"),
        ("_km", "km"),
        ("_s", "s"),
        ("_snr", "ratio"),
        ("_ratio", "ratio"),
        ("_mmi", "MMI"),
        ("magnitude", "M"),
        ("magnitude_step", "M"),
    ):
        if name.endswith(suffix):
            return unit
    return ""


def settings_markdown(settings: Settings | None = None) -> str:
    """The settings as the markdown table of docs/settings.md."""
    s = settings or Settings()
    lines = [
        "# Settings",
        "",
        "Generated by `yujing settings --markdown` from `src/yujing/settings.py`; a test keeps",
        "this file equal to it. Units are in the names.",
        "",
    ]
    for section in msgspec.structs.fields(Settings):
        sub = getattr(s, section.name)
        lines += [f"## {section.name}", "", "| setting | value | unit | meaning |", "|---|---|---|---|"]
        info = msgspec.inspect.type_info(type(sub))
        for f in info.fields:
            desc = ""
            typ = f.type
            if isinstance(typ, msgspec.inspect.Metadata):
                desc = typ.extra_json_schema.get("description", "") if typ.extra_json_schema else ""
            value = getattr(sub, f.name)
            if isinstance(value, tuple):
                value = ", ".join(f"{v:g}" for v in value)
            lines.append(f"| `{f.name}` | {value} | {_unit(f.name)} | {desc} |")
        lines.append("")
    return "\n".join(lines)
