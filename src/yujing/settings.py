"""One table of the engine's constants, with units and where each value comes from.

The same table feeds the code, the CLI (``yujing settings`` prints it as JSON,
``yujing settings --markdown`` as the table in docs/settings.md, which a test keeps equal)
and the docs. Values are physics or published practice, not fitted to single events of the
development set; docs/constants.md says more about the choices.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import msgspec.toml


def _d(text: str):
    return msgspec.Meta(description=text)


class PickerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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


class AssociateSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    min_devices: Annotated[int, _d("Triggered devices needed to announce an event (ElarmS/EPIC use 3-4).")] = 3
    min_site_separation_km: Annotated[float, _d(
        "Triggers closer together than this count as one site when counting devices for a "
        "new event: a slammed door, a truck or a crowd shaking one building (or many fake "
        "devices in one place) must not make an earthquake.")] = 3.0
    moveout_slack_s: Annotated[float, _d(
        "Two triggers can belong to one event only if their onsets differ by at most the P "
        "travel time between the two devices plus this slack (clock and picking error).")] = 2.0
    max_pair_distance_km: Annotated[float, _d("Longest distance between two devices paired in a new event.")] = 300.0
    min_moveout_s: Annotated[float, _d(
        "Before an event is first announced, the P wave must be seen travelling across its "
        "P picks: from 10 picks on, their onsets regressed on the P travel times from its "
        "location to their sites must rise at least half as fast as the wave and by at "
        "least this much over those sites; with fewer, the onsets must span this much. One "
        "pick-time sigma. Fakes triggering together in one area fit a deep source under "
        "them, but their onsets do not follow its travel times (docs/security.md). 0: no "
        "requirement.")] = 0.5
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
    presence_settle_s: Annotated[float, _d(
        "After the first heartbeat the engine hears (a start, a restart), events seen "
        "only by phones wait at most this long: every phone that (re)connects sends a "
        "heartbeat (docs/protocol.md), and until they have, the quiet phones whose silence "
        "refuses chance groups of false triggers are unknown. The wait ends sooner once "
        "fewer than 1 % new phones a second join. Sensors that stream are known within "
        "seconds and do not wait. 0: no wait.")] = 10.0
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


class DepthRegion(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a region's own depth prior replaces the global one (LocateSettings'
    ``depth_prior_*``): the trial epicentres inside ``polygon`` get this prior. Regions are
    tectonic knowledge of a deployment's area (how deep its quakes are), never fitted to
    single events."""

    name: str
    polygon: Annotated[tuple[tuple[float, float], ...], _d(
        "Vertices (latitude, longitude) in degrees, in order; closed implicitly. Must not "
        "cross the antimeridian (longitudes span less than 180 degrees).")]
    typical_km: Annotated[float, _d("Mild centre of the prior (as depth_prior_typical_km).")]
    free_km: Annotated[float, _d("Bottom of the free zone (as depth_prior_free_km).")]
    scale_km: Annotated[float, _d("Scale of the cost below it (as depth_prior_scale_km)."), msgspec.Meta(gt=0)]
    source: str = ""

    def __post_init__(self):
        if len(self.polygon) < 3:
            raise ValueError(f"depth region {self.name!r}: a polygon needs at least 3 vertices, got {len(self.polygon)}")
        for lat, lon in self.polygon:
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                raise ValueError(f"depth region {self.name!r}: vertex ({lat}, {lon}) is not a (latitude, longitude) in degrees")
        lons = [lon for _, lon in self.polygon]
        if max(lons) - min(lons) >= 180.0:
            raise ValueError(f"depth region {self.name!r}: longitudes span 180 degrees or more; split a region that "
                             "crosses the antimeridian into one on each side")


#: California south of the Mendocino triple junction: a transform-plate-boundary crust
#: with no subducting slab beneath it. Its quakes are shallow: the depth above which 95 % of
#: the relocated seismicity lies is 10-20 km across southern California (Nazareth & Hauksson
#: 2004, BSSA 94) and about 12-15 km under the San Francisco Bay area (Hill et al. 1990,
#: USGS PP 1515; Waldhauser & Ellsworth 2002), and the large quakes nucleate in its lower
#: half (Loma Prieta 18 km, Northridge 18 km, Landers 7 km, Ridgecrest 8 km). North of
#: 40.3 N (Gorda slab, Cascadia) and the Gulf of California are left to the global prior.
CALIFORNIA_CRUST = DepthRegion(
    name="California crust (transform boundary, south of the Mendocino triple junction)",
    polygon=((40.3, -125.5), (40.3, -119.5), (39.0, -119.5), (35.0, -114.0), (32.3, -114.4),
             (32.5, -117.2), (34.0, -121.0), (36.5, -123.0)),
    typical_km=10.0,
    free_km=15.0,
    scale_km=5.0,
    source="Nazareth & Hauksson 2004; Hill et al. 1990; Waldhauser & Ellsworth 2002",
)


class LocateSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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
    depth_regions: Annotated[tuple[DepthRegion, ...], _d(
        "Regions whose known depth of seismicity replaces the global depth prior above at the "
        "trial epicentres inside them (first match wins). Shipped: California's crust, whose "
        "quakes are shallower than about 15-20 km; a deployment adds its own in a settings "
        "file (docs/settings.md). Elsewhere the global prior holds, which leaves subduction "
        "depths to the picks.")] = (CALIFORNIA_CRUST,)


class MagnitudeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    detection_snr: Annotated[float, _d(
        "An amplitude is signal when it exceeds this multiple of the largest value in the "
        "5 s of noise before the onset (a peak measure of noise, so 2 is already clear).")] = 2.0


class AlertSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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
            if isinstance(value, tuple) and all(isinstance(v, DepthRegion) for v in value):
                value = "; ".join(v.name for v in value) + " (below)" if value else "none"
            elif isinstance(value, tuple):
                value = ", ".join(f"{v:g}" for v in value)
            lines.append(f"| `{f.name}` | {value} | {_unit(f.name)} | {desc} |")
        lines.append("")
    regions = s.locate.depth_regions
    if regions:
        lines += ["### locate.depth_regions", "",
                  "| region | typical_km | free_km | scale_km | polygon (lat, lon) | source |", "|---|---|---|---|---|---|"]
        for r in regions:
            poly = " ".join(f"({la:g}, {lo:g})" for la, lo in r.polygon)
            lines.append(f"| {r.name} | {r.typical_km:g} | {r.free_km:g} | {r.scale_km:g} | {poly} | {r.source} |")
        lines.append("")
    lines += [
        "## A settings file",
        "",
        "`yujing replay`, `yujing demo` and `yujing serve` take `--settings FILE` (TOML, or JSON",
        "with the shape `yujing settings` prints); what it leaves out keeps the value above, and",
        "`yujing settings --settings FILE` prints the result. A section given replaces only the",
        "settings it names, but a list (such as `depth_regions`) replaces the whole list: repeat",
        "the shipped regions to keep them. Example, a deployment over a subduction zone's",
        "forearc that adds its own region:",
        "",
        "```toml",
        "[locate]",
        "depth_prior_typical_km = 15.0",
        "",
        "[[locate.depth_regions]]",
        'name = "inland intraslab zone"',
        "polygon = [[19.5, -100.0], [19.5, -97.0], [17.0, -97.0], [17.0, -100.0]]",
        "typical_km = 50.0",
        "free_km = 80.0",
        "scale_km = 20.0",
        "```",
        "",
    ]
    return "\n".join(lines)


def load_settings(path) -> Settings:
    """Settings from a TOML (``.toml``) or JSON file; what the file leaves out keeps its
    default. Raises ValueError naming the file and the setting that is wrong."""
    from pathlib import Path

    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"settings file {p}: cannot read it ({exc.strerror or exc})") from exc
    try:
        if p.suffix.lower() == ".toml":
            return msgspec.toml.decode(raw, type=Settings)
        return msgspec.json.decode(raw, type=Settings)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        kind = "TOML" if p.suffix.lower() == ".toml" else "JSON (or name the file .toml)"
        raise ValueError(f"settings file {p} ({kind}): {exc}") from exc
