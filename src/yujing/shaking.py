"""Ground-motion forecast for every cell at once: PGA, PGV and intensity from an event.

Given an event (epicentre, depth, magnitude) and the centres of many cells (numpy arrays of
latitudes and longitudes, e.g. a million H3 cells), :func:`forecast` returns the *median*
peak ground acceleration (g), peak ground velocity (cm/s) and Modified Mercalli intensity of
each cell, in one pass of numpy over all of them. :func:`forecast_site` is the same forecast
for one site in plain ``math``: the function a device runs on its own position, and the
slow, obviously-correct twin the vectorised code is tested against.

Ground-motion models (``model=``):

``"bssa14"``
    Boore, Stewart, Seyhan & Atkinson (2014), *NGA-West2 equations for predicting PGA, PGV,
    and 5% damped PSA for shallow crustal earthquakes*, Earthquake Spectra 30(3), 1057-1085.
    The default, for shallow crustal quakes. Magnitude scaling, geometric spreading and
    anelastic attenuation with the global regional term (the paper's "global", which is
    also California's and Taiwan's: Δc3 = 0), linear and nonlinear site amplification from
    Vs30, Joyner-Boore distance. Fault mechanism unspecified (``"U"``) unless given.
    The basin-depth term is left out: the paper applies it only at periods of 0.65 s and
    longer and its table has no basin coefficients for PGA or PGV (f6 = f7 = -9.9, "not
    used"), so leaving it out changes nothing for PGA and PGV.
``"bchydro_interface"``, ``"bchydro_intraslab"``
    The BC Hydro subduction model, Abrahamson, Gregor & Addo (2016), *BC Hydro ground
    motion prediction equations for subduction earthquakes*, Earthquake Spectra 32(1),
    23-44, with its central magnitude-break adjustment ΔC1 (interface: +0.2 for PGA, 0 at
    1 s; intraslab: -0.3). Interface events use the rupture distance, intraslab events the
    hypocentral distance (the model's own definitions). Sites are forearc unless
    ``backarc`` says otherwise (per site).

BC Hydro has no PGV. Its PGV here is the Newmark & Hall (1982) conversion from the model's
own 5%-damped PSA at 1.0 s, the conversion ShakeMap has used for models without PGV
(shakelib's ``NewmarkHall1982``): in the velocity-sensitive band the 5%-damped
pseudo-velocity is 1.65 times PGV, so
``PGV = PSA(1 s) * g * (1 s) / (2 pi * 1.65)`` = 94.6 cm/s per g. For small quakes
(M < ~5.5) the 1 s spectral ordinate lies below the velocity plateau and this
*underestimates* PGV; since the intensity is the larger of the PGA and PGV intensities,
there the PGA intensity carries the forecast.

Distances. For M >= 6.5 (``FINITE_FAULT_MIN_MAGNITUDE``) the epicentre is no longer a good
stand-in for the rupture: :func:`finite_fault_distances_km` turns the epicentral distance
into the expected Joyner-Boore and rupture distances to a rupture of unknown strike, a
simplified form of Thompson & Worden (2018), *Estimating rupture distances without a
rupture*, BSSA 108(1), doi:10.1785/0120170174: a vertical rupture of the Wells &
Coppersmith (1994) subsurface length (all mechanisms), the epicentre anywhere along it
(uniform), its strike uniform over all directions, averaged. See that function for the
geometry and its limits.

Intensity: Worden, Gerstenberger, Rhoades & Wald (2012), *Probabilistic relationships
between ground-motion parameters and Modified Mercalli intensity in California*, BSSA
102(1), 204-221: the bilinear ground-motion-to-intensity relations, without their
distance and magnitude terms; PGA in cm/s^2 and PGV in cm/s (the paper's units). The
forecast MMI is the larger of the PGA and PGV intensities, clipped to [1, 10].

Everything is a *median*: no scatter is added. ``total_sigma_ln`` gives each model's total
standard deviation in natural-log units for whoever wants exceedance probabilities.

Model choice: :func:`choose_model` picks the model from the hypocentre and a trench trace
(the Middle America Trench by default); see it for the rule and its limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .geo import EARTH_RADIUS_KM, KM_PER_DEG, distance_km

__all__ = [
    "MODELS",
    "MECHANISMS",
    "FINITE_FAULT_MIN_MAGNITUDE",
    "Shaking",
    "SiteShaking",
    "Trench",
    "MIDDLE_AMERICA_TRENCH",
    "forecast",
    "forecast_site",
    "bssa14",
    "bchydro",
    "worden2012_mmi",
    "total_sigma_ln",
    "finite_fault_distances_km",
    "rupture_length_km",
    "rupture_width_km",
    "choose_model",
    "trench_distance_km",
]

MODELS = ("bssa14", "bchydro_interface", "bchydro_intraslab")
MECHANISMS = ("U", "SS", "NS", "RS")  # unspecified, strike-slip, normal, reverse

#: standard gravity, cm/s^2 per g
G_CM_S2 = 980.665
_LN10 = math.log(10.0)
_LOG10_G = math.log10(G_CM_S2)


# ------------------------------------------------------------------------------ BSSA14


class _Bssa14Row(NamedTuple):
    e0: float  # event term, unspecified mechanism
    e1: float  # strike-slip
    e2: float  # normal
    e3: float  # reverse
    e4: float
    e5: float
    e6: float
    m_h: float  # hinge magnitude
    c1: float
    c2: float
    c3: float  # anelastic term (global)
    m_ref: float
    r_ref_km: float
    h_km: float
    dc3_global: float
    c: float  # linear site term slope
    v_c_m_s: float  # Vs30 above which the linear site term is flat
    v_ref_m_s: float
    f1: float
    f3_g: float
    f4: float
    f5: float
    r1_km: float
    r2_km: float
    dphi_r: float
    dphi_v: float
    v1_m_s: float
    v2_m_s: float
    phi1: float
    phi2: float
    tau1: float
    tau2: float


# Boore, Stewart, Seyhan & Atkinson (2014), coefficient table (electronic supplement,
# revision of 2014-07-15), the PGA and PGV rows, as transcribed in pygmm 0.8
# (data/boore_stewart_seyhan_atkinson-2014.csv). Left out: Δc3 for China/Turkey
# (PGA 0.0028576, PGV 0.004345) and Italy/Japan (-0.00255, -0.00033), and the basin
# coefficients f6 = f7 = -9.9 (no basin term for PGA/PGV).
_BSSA14_PGA = _Bssa14Row(
    e0=0.4473, e1=0.4856, e2=0.2459, e3=0.4539, e4=1.431, e5=0.05053, e6=-0.1662, m_h=5.5,
    c1=-1.134, c2=0.1917, c3=-0.008088, m_ref=4.5, r_ref_km=1.0, h_km=4.5, dc3_global=0.0,
    c=-0.6, v_c_m_s=1500.0, v_ref_m_s=760.0, f1=0.0, f3_g=0.1, f4=-0.15, f5=-0.00701,
    r1_km=110.0, r2_km=270.0, dphi_r=0.1, dphi_v=0.07, v1_m_s=225.0, v2_m_s=300.0,
    phi1=0.695, phi2=0.495, tau1=0.398, tau2=0.348,
)  # fmt: skip
_BSSA14_PGV = _Bssa14Row(
    e0=5.037, e1=5.078, e2=4.849, e3=5.033, e4=1.073, e5=-0.1536, e6=0.2252, m_h=6.2,
    c1=-1.243, c2=0.1489, c3=-0.00344, m_ref=4.5, r_ref_km=1.0, h_km=5.3, dc3_global=0.0,
    c=-0.84, v_c_m_s=1300.0, v_ref_m_s=760.0, f1=0.0, f3_g=0.1, f4=-0.1, f5=-0.00844,
    r1_km=105.0, r2_km=272.0, dphi_r=0.082, dphi_v=0.08, v1_m_s=225.0, v2_m_s=300.0,
    phi1=0.644, phi2=0.552, tau1=0.401, tau2=0.346,
)  # fmt: skip


def _bssa14_event_term(k: _Bssa14Row, magnitude: float, mechanism: str) -> float:
    """F_E: mechanism constant plus the magnitude scaling hinged at M_h."""
    e = {"U": k.e0, "SS": k.e1, "NS": k.e2, "RS": k.e3}[mechanism]
    dm = magnitude - k.m_h
    if magnitude <= k.m_h:
        return e + k.e4 * dm + k.e5 * dm * dm
    return e + k.e6 * dm


def _bssa14_ln_rock(k: _Bssa14Row, magnitude: float, mechanism: str, rjb_km) -> np.ndarray:
    """ln of the median on the reference rock (Vs30 = 760 m/s): F_E + F_P."""
    r = np.sqrt(rjb_km * rjb_km + k.h_km * k.h_km)
    slope = k.c1 + k.c2 * (magnitude - k.m_ref)
    # fold every scalar into one constant so that each cell costs a sqrt, a log and 4 flops
    c3 = k.c3 + k.dc3_global
    const = _bssa14_event_term(k, magnitude, mechanism) - slope * math.log(k.r_ref_km) - c3 * k.r_ref_km
    return const + slope * np.log(r) + c3 * r


def _bssa14_site_linear(k: _Bssa14Row, vs30):
    """ln F_lin, the linear site term: flat above V_c."""
    return k.c * np.log(np.minimum(vs30, k.v_c_m_s) / k.v_ref_m_s)


def _bssa14_f2(k: _Bssa14Row, vs30):
    """f2, the slope of the nonlinear site term: zero at and above 760 m/s."""
    return k.f4 * (np.exp(k.f5 * (np.minimum(vs30, 760.0) - 360.0)) - math.exp(k.f5 * (760.0 - 360.0)))


def _bssa14_ln(magnitude: float, rjb_km, vs30, mechanism: str) -> tuple[np.ndarray, np.ndarray]:
    """ln PGA (g) and ln PGV (cm/s), medians, BSSA14 without basin term."""
    ln_pga_rock = _bssa14_ln_rock(_BSSA14_PGA, magnitude, mechanism, rjb_km)
    ln_pgv_rock = _bssa14_ln_rock(_BSSA14_PGV, magnitude, mechanism, rjb_km)
    # nonlinear site term ln F_nl: driven by PGAr, the median PGA on 760 m/s rock
    x = np.log1p(np.exp(ln_pga_rock) / _BSSA14_PGA.f3_g)  # ln((PGAr + f3) / f3)
    x_v = x if _BSSA14_PGV.f3_g == _BSSA14_PGA.f3_g else np.log1p(np.exp(ln_pga_rock) / _BSSA14_PGV.f3_g)
    a, v = _BSSA14_PGA, _BSSA14_PGV
    ln_pga = ln_pga_rock + (_bssa14_site_linear(a, vs30) + a.f1) + _bssa14_f2(a, vs30) * x
    ln_pgv = ln_pgv_rock + (_bssa14_site_linear(v, vs30) + v.f1) + _bssa14_f2(v, vs30) * x_v
    return ln_pga, ln_pgv


def bssa14(magnitude: float, rjb_km, vs30=760.0, mechanism: str = "U") -> tuple[np.ndarray, np.ndarray]:
    """Median PGA (g) and PGV (cm/s) of BSSA14 at Joyner-Boore distances ``rjb_km`` (km).

    ``vs30`` (m/s) is a scalar or broadcasts against ``rjb_km``. ``mechanism`` is ``"U"``
    (unspecified), ``"SS"``, ``"NS"`` or ``"RS"``. The published ranges are M 3-8.5 (3-7
    for normal faulting), Rjb 0-400 km, Vs30 150-1500 m/s; outside them this extrapolates.
    """
    _check_mechanism(mechanism)
    rjb = np.asarray(rjb_km, dtype=float)
    ln_pga, ln_pgv = _bssa14_ln(float(magnitude), rjb, np.asarray(vs30, dtype=float), mechanism)
    return np.exp(ln_pga), np.exp(ln_pgv)


def _bssa14_sigma_ln(k: _Bssa14Row, magnitude: float, rjb_km, vs30) -> np.ndarray:
    """Total sigma (ln) of BSSA14 from its tau(M) and phi(M, Rjb, Vs30)."""
    w = min(max(magnitude, 4.5), 5.5) - 4.5
    tau = k.tau1 + (k.tau2 - k.tau1) * w
    phi = k.phi1 + (k.phi2 - k.phi1) * w
    r = np.maximum(np.asarray(rjb_km, dtype=float), 1e-3)  # ln(0) guard; clipped to 0 below anyway
    phi = phi + k.dphi_r * np.clip(np.log(r / k.r1_km) / math.log(k.r2_km / k.r1_km), 0.0, 1.0)
    v = np.asarray(vs30, dtype=float)
    phi = phi - k.dphi_v * np.clip(np.log(k.v2_m_s / v) / math.log(k.v2_m_s / k.v1_m_s), 0.0, 1.0)
    return np.sqrt(phi * phi + tau * tau)


# ----------------------------------------------------------------------------- BC Hydro


class _BcHydroRow(NamedTuple):
    v_lin_m_s: float
    b: float
    n: float
    c: float
    c4_km: float
    t1: float
    t2: float
    t3: float
    t4: float
    t5: float
    t6: float
    t7: float
    t8: float
    t9: float
    t10: float
    t11: float
    t12: float
    t13: float
    t14: float
    t15: float
    t16: float
    phi: float
    tau: float
    dc1_interface: float  # central ΔC1 for interface events at this period
    dc1_intraslab: float


# Abrahamson, Gregor & Addo (2016), coefficient table (pygmm's file labels it Table 3): the
# PGA row and the 1.0 s PSA row (for PGV, see the module docstring), as transcribed in
# pygmm 0.8 (data/abrahamson_gregor_addo_2016.csv).
# Period-independent constants of the paper: n = 1.18, c = 1.88, c4 = 10 km, θ3 = 0.1,
# θ4 = 0.9, θ5 = 0, θ9 = 0.4, C1 = 7.8. Central ΔC1: interface +0.2 up to 0.3 s falling to
# 0 at 1 s; intraslab -0.3 at all periods.
_BCHYDRO_PGA = _BcHydroRow(
    v_lin_m_s=865.1, b=-1.186, n=1.18, c=1.88, c4_km=10.0, t1=4.2203, t2=-1.35, t3=0.1, t4=0.9,
    t5=0.0, t6=-0.0012, t7=1.0988, t8=-1.42, t9=0.4, t10=3.12, t11=0.0130, t12=0.980,
    t13=-0.0135, t14=-0.40, t15=0.9969, t16=-1.00, phi=0.6, tau=0.43,
    dc1_interface=0.2, dc1_intraslab=-0.3,
)  # fmt: skip
_BCHYDRO_PSA1 = _BcHydroRow(
    v_lin_m_s=400.0, b=-1.955, n=1.18, c=1.88, c4_km=10.0, t1=2.7981, t2=-0.85, t3=0.1, t4=0.9,
    t5=0.0, t6=-0.0062, t7=0.1746, t8=-0.34, t9=0.4, t10=1.10, t11=0.0114, t12=1.470,
    t13=-0.0363, t14=-0.07, t15=0.3300, t16=-0.14, phi=0.6, tau=0.43,
    dc1_interface=0.0, dc1_intraslab=-0.3,
)  # fmt: skip
_BCHYDRO_C1 = 7.8
#: reference site of the BC Hydro nonlinear site term: PGA on Vs30 = 1000 m/s rock
_BCHYDRO_V_REF_M_S = 1000.0
#: Newmark & Hall (1982) median amplification of 5%-damped pseudo-velocity over PGV in the
#: velocity-sensitive band
_NEWMARK_HALL_PSV_OVER_PGV = 1.65
#: PGV (cm/s) per g of PSA at 1.0 s: PGV = PSA * g * T / (2 pi * 1.65), T = 1 s
PGV_CM_S_PER_PSA1_G = G_CM_S2 * 1.0 / (2.0 * math.pi * _NEWMARK_HALL_PSV_OVER_PGV)


def _bchydro_ln_without_site(k: _BcHydroRow, magnitude: float, slab: bool, distance_km, depth_km: float):
    """ln of the median without the site and backarc terms (magnitude, path, depth)."""
    dc1 = k.dc1_intraslab if slab else k.dc1_interface
    f_event = 1.0 if slab else 0.0
    m_break = _BCHYDRO_C1 + dc1
    f_mag = (k.t4 if magnitude <= m_break else k.t5) * (magnitude - m_break) + k.t13 * (10.0 - magnitude) ** 2
    const = k.t1 + k.t4 * dc1 + k.t10 * f_event + f_mag
    if slab:
        const += k.t11 * (min(depth_km, 120.0) - 60.0)  # f_depth
    slope = k.t2 + k.t14 * f_event + k.t3 * (magnitude - 7.8)
    near = k.c4_km * math.exp(k.t9 * (magnitude - 6.0))  # magnitude-dependent near-source saturation
    return const + slope * np.log(distance_km + near) + k.t6 * distance_km


def _bchydro_site(k: _BcHydroRow, vs30, pga1000_g):
    """f_site: nonlinear below V_lin, driven by the PGA on 1000 m/s rock."""
    vs_ratio = np.minimum(vs30, _BCHYDRO_V_REF_M_S) / k.v_lin_m_s
    linear = (k.t12 + k.b * k.n) * np.log(vs_ratio)
    scalar = np.ndim(vs30) == 0
    if scalar and float(vs30) >= k.v_lin_m_s:
        return linear
    nonlinear = k.t12 * np.log(vs_ratio) - k.b * np.log(pga1000_g + k.c) + k.b * np.log(pga1000_g + k.c * vs_ratio**k.n)
    if scalar:
        return nonlinear
    return np.where(vs30 < k.v_lin_m_s, nonlinear, linear)


def _bchydro_faba(k: _BcHydroRow, slab: bool, distance_km):
    """f_FABA for backarc sites (forearc sites: zero)."""
    if slab:
        return k.t7 + k.t8 * np.log(np.maximum(distance_km, 85.0) / 40.0)
    return k.t15 + k.t16 * np.log(np.maximum(distance_km, 100.0) / 40.0)


def _bchydro_ln(magnitude: float, distance_km, depth_km: float, vs30, slab: bool, backarc):
    """ln PGA (g) and ln PSA(1 s) (g), medians of BC Hydro (2016)."""
    ln_pga_free = _bchydro_ln_without_site(_BCHYDRO_PGA, magnitude, slab, distance_km, depth_km)
    ln_psa_free = _bchydro_ln_without_site(_BCHYDRO_PSA1, magnitude, slab, distance_km, depth_km)
    any_backarc = bool(np.any(backarc))
    faba_pga = _bchydro_faba(_BCHYDRO_PGA, slab, distance_km) if any_backarc else 0.0
    faba_psa = _bchydro_faba(_BCHYDRO_PSA1, slab, distance_km) if any_backarc else 0.0
    if any_backarc and not np.all(backarc):
        faba_pga = np.where(backarc, faba_pga, 0.0)
        faba_psa = np.where(backarc, faba_psa, 0.0)
    # PGA1000: the reference PGA on 1000 m/s rock, with that rock's own (linear) site term
    a = _BCHYDRO_PGA
    site_ref = (a.t12 + a.b * a.n) * math.log(_BCHYDRO_V_REF_M_S / a.v_lin_m_s)
    pga1000 = np.exp(ln_pga_free + faba_pga + site_ref)
    ln_pga = ln_pga_free + faba_pga + _bchydro_site(_BCHYDRO_PGA, vs30, pga1000)
    ln_psa = ln_psa_free + faba_psa + _bchydro_site(_BCHYDRO_PSA1, vs30, pga1000)
    return ln_pga, ln_psa


def bchydro(
    magnitude: float,
    distance_km,
    depth_km: float,
    vs30=760.0,
    event_type: str = "interface",
    backarc=False,
) -> tuple[np.ndarray, np.ndarray]:
    """Median PGA (g) and PGV (cm/s) of BC Hydro (Abrahamson, Gregor & Addo 2016).

    ``distance_km`` is the rupture distance for ``event_type="interface"`` and the
    hypocentral distance for ``"intraslab"``; ``depth_km`` is the hypocentral depth
    (used by intraslab events only). ``vs30`` (m/s) and ``backarc`` (bool, True for sites
    behind the volcanic arc) are scalars or broadcast against the distances. PGV is the
    Newmark-Hall conversion of PSA(1 s) (module docstring). The model was developed for
    moderate to great subduction quakes; for M4-5 quakes it is an extrapolation.
    """
    slab = _event_type_is_slab(event_type)
    dist = np.asarray(distance_km, dtype=float)
    ba = np.asarray(backarc, dtype=bool)
    ln_pga, ln_psa = _bchydro_ln(float(magnitude), dist, float(depth_km), np.asarray(vs30, dtype=float), slab, ba)
    return np.exp(ln_pga), np.exp(ln_psa) * PGV_CM_S_PER_PSA1_G


def _event_type_is_slab(event_type: str) -> bool:
    if event_type not in ("interface", "intraslab"):
        raise ValueError(f"event_type must be 'interface' or 'intraslab', not {event_type!r}")
    return event_type == "intraslab"


# -------------------------------------------------------------------------- intensity

# Worden et al. (2012), the bilinear relations: MMI = c1 + c2 log10(Y) for log10(Y) <= t1,
# c3 + c4 log10(Y) above; Y = PGA in cm/s^2 or PGV in cm/s. t2 is the MMI at the break.
_WORDEN_PGA = (1.78, 1.55, -1.60, 3.70, 1.57)  # c1, c2, c3, c4, t1 (t2 = 4.22)
_WORDEN_PGV = (3.78, 1.47, 2.89, 3.16, 0.53)  # (t2 = 4.56)
MMI_MIN = 1.0
MMI_MAX = 10.0


def _worden_bilinear(log10_y, coeffs):
    c1, c2, c3, c4, t1 = coeffs
    return np.where(log10_y <= t1, c1 + c2 * log10_y, c3 + c4 * log10_y)


def worden2012_mmi(pga_cm_s2, pgv_cm_s=None) -> np.ndarray:
    """MMI from PGA (cm/s^2) and PGV (cm/s) by Worden et al. (2012), clipped to [1, 10].

    The larger of the PGA and the PGV intensity; PGA alone when ``pgv_cm_s`` is None.
    Zero motion gives MMI 1.
    """
    with np.errstate(divide="ignore"):
        mmi = _worden_bilinear(np.log10(np.asarray(pga_cm_s2, dtype=float)), _WORDEN_PGA)
        if pgv_cm_s is not None:
            mmi = np.maximum(mmi, _worden_bilinear(np.log10(np.asarray(pgv_cm_s, dtype=float)), _WORDEN_PGV))
    return np.clip(mmi, MMI_MIN, MMI_MAX)


def _mmi_from_ln(ln_pga_g, ln_pgv_cm_s):
    """Worden MMI straight from the natural logs (saves two exp/log10 passes per cell)."""
    mmi = _worden_bilinear(ln_pga_g * (1.0 / _LN10) + _LOG10_G, _WORDEN_PGA)
    np.maximum(mmi, _worden_bilinear(ln_pgv_cm_s * (1.0 / _LN10), _WORDEN_PGV), out=mmi)
    return np.clip(mmi, MMI_MIN, MMI_MAX, out=mmi)


# -------------------------------------------------------------------------- distances

#: magnitude from which the rupture's extent is accounted for; below it the Wells &
#: Coppersmith rupture is under 25 km long (11 km at M6), small beside the distances a
#: warning is about
FINITE_FAULT_MIN_MAGNITUDE = 6.5


def rupture_length_km(magnitude: float) -> float:
    """Wells & Coppersmith (1994) subsurface rupture length, all mechanisms (km):
    log10 RLD = -2.44 + 0.59 M (Table 2A, M 4.8-8.1)."""
    return 10.0 ** (-2.44 + 0.59 * magnitude)


def rupture_width_km(magnitude: float) -> float:
    """Wells & Coppersmith (1994) down-dip rupture width, all mechanisms (km):
    log10 RW = -1.01 + 0.32 M (Table 2A)."""
    return 10.0 ** (-1.01 + 0.32 * magnitude)


_TABLE_N_STRIKE = 360  # strike directions over 180 degrees (a line is symmetric)
_TABLE_N_ALONG = 100  # epicentre positions along the rupture


@lru_cache(maxsize=1)
def _strike_averaged_table() -> tuple[np.ndarray, np.ndarray]:
    """(x, d): for a site at x = Repi / L, the mean distance to the rupture line is L (x - d).

    The rupture is a segment of length 1 through the epicentre, which sits at a uniform
    fraction s of its length; the strike is uniform. Midpoint rule over both. d rises from
    0 at x = 0 to 1/pi (the mean reach of the rupture towards the site) far away; beyond the
    table it is held at its last value. Computed once, on first use (~0.05 s).
    """
    x = np.concatenate(([0.0], np.geomspace(1e-3, 100.0, 201)))
    theta = (np.arange(_TABLE_N_STRIKE) + 0.5) * (math.pi / _TABLE_N_STRIKE)
    s = (np.arange(_TABLE_N_ALONG) + 0.5) / _TABLE_N_ALONG
    cos_t = np.cos(theta)[:, None]
    sin_t = np.abs(np.sin(theta))[:, None]
    lo, hi = -s[None, :], 1.0 - s[None, :]  # rupture ends along strike, epicentre at 0
    mean = np.empty_like(x)
    for i, xi in enumerate(x):
        along = xi * cos_t
        across = xi * sin_t
        beyond = along - np.clip(along, lo, hi)  # distance along strike past the nearer end
        mean[i] = np.sqrt(beyond * beyond + across * across).mean()
    d = x - mean
    d[0] = 0.0
    return x, np.maximum.accumulate(d)  # guard monotonicity against quadrature wiggles


def finite_fault_distances_km(magnitude: float, depth_km: float, epicentral_km) -> tuple[np.ndarray, np.ndarray]:
    """Approximate (Rjb, Rrup) in km from epicentral distances, for an unknown rupture.

    Below ``FINITE_FAULT_MIN_MAGNITUDE`` the point source stands: Rjb = Repi and
    Rrup = the hypocentral distance. From M 6.5 the rupture is a vertical plane of the
    Wells & Coppersmith (1994) length L and width W, centred in depth on the hypocentre
    (its top at max(0, depth - W/2)), with the epicentre at a uniformly random point along
    its length and a uniformly random strike; Rjb is the mean over both of the distance
    to its surface trace (a simplified form of Thompson & Worden 2018, who also vary dip
    and hypocentre depth and tabulate per magnitude), and Rrup = sqrt(Rjb^2 + top^2).
    At the epicentre Rjb = 0; far away Rjb -> Repi - L/pi. Limits: a dipping rupture
    (a megathrust above all) has a wide surface projection, so hanging-wall sites are
    closer than this says; W&C (1994) is a crustal scaling, subduction ruptures are wider.
    """
    repi = np.asarray(epicentral_km, dtype=float)
    depth = float(depth_km)
    if magnitude < FINITE_FAULT_MIN_MAGNITUDE:
        return repi, np.sqrt(repi * repi + depth * depth)
    length = rupture_length_km(magnitude)
    x, d = _strike_averaged_table()
    rjb = np.maximum(repi - length * np.interp(repi * (1.0 / length), x, d), 0.0)
    top = max(0.0, depth - 0.5 * rupture_width_km(magnitude))
    return rjb, np.sqrt(rjb * rjb + top * top)


# --------------------------------------------------------------------------- forecast


@dataclass(frozen=True, eq=False)
class Shaking:
    """Median forecast for many sites; arrays have the broadcast shape of the site inputs.

    ``pga_g`` peak ground acceleration (g), ``pgv_cm_s`` peak ground velocity (cm/s),
    ``mmi`` Worden et al. (2012) intensity in [1, 10]; ``epicentral_km`` the epicentral
    distance and ``distance_km`` the distance the model used, of kind ``distance_metric``
    (``"rjb"`` for BSSA14, ``"rrup"`` for BC Hydro interface, ``"rhypo"`` for intraslab).
    ``vs30`` (m/s) as given.
    """

    model: str
    magnitude: float
    depth_km: float
    pga_g: np.ndarray
    pgv_cm_s: np.ndarray
    mmi: np.ndarray
    epicentral_km: np.ndarray
    distance_km: np.ndarray
    distance_metric: str
    vs30: np.ndarray | float

    @property
    def pga_gal(self) -> np.ndarray:
        """PGA in gal (cm/s^2), the unit of the records."""
        return self.pga_g * G_CM_S2

    def sigma_ln(self) -> tuple[np.ndarray, np.ndarray]:
        """Total standard deviation (natural log) of ln PGA and ln PGV at these sites."""
        return total_sigma_ln(self.model, self.magnitude, self.distance_km, self.vs30)


class SiteShaking(NamedTuple):
    """Median forecast at one site (plain floats): see :class:`Shaking` for the fields."""

    pga_g: float
    pgv_cm_s: float
    mmi: float
    epicentral_km: float
    distance_km: float


_DISTANCE_METRIC = {"bssa14": "rjb", "bchydro_interface": "rrup", "bchydro_intraslab": "rhypo"}


def _resolve_model(model: str | None, lat: float, lon: float, depth_km: float) -> str:
    if model is None or model == "auto":
        return choose_model(lat, lon, depth_km)
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS} or 'auto', not {model!r}")
    return model


def _check_mechanism(mechanism: str) -> None:
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, not {mechanism!r}")


def _check_event(depth_km: float, magnitude: float) -> tuple[float, float]:
    depth, mag = float(depth_km), float(magnitude)
    if not math.isfinite(mag):
        raise ValueError(f"magnitude must be finite, not {magnitude!r}")
    if not (math.isfinite(depth) and depth >= 0.0):
        raise ValueError(f"depth_km must be finite and >= 0, not {depth_km!r}")
    return depth, mag


def forecast(
    lat: float,
    lon: float,
    depth_km: float,
    magnitude: float,
    site_lat,
    site_lon,
    vs30=760.0,
    model: str | None = "bssa14",
    *,
    mechanism: str = "U",
    backarc=False,
    finite_fault: bool = True,
) -> Shaking:
    """Median PGA, PGV and MMI at every site, for an event at (lat, lon) in degrees.

    ``site_lat``/``site_lon`` (degrees) are arrays (or scalars) of any matching shape;
    ``vs30`` (m/s, default 760: the NEHRP B/C boundary) and ``backarc`` (BC Hydro only)
    are scalars or arrays broadcasting against them. ``model`` is one of ``MODELS``, or
    ``"auto"``/None for :func:`choose_model`. ``mechanism`` (BSSA14 only) is ``"U"``,
    ``"SS"``, ``"NS"`` or ``"RS"``. ``finite_fault=False`` keeps point-source distances
    at all magnitudes.
    """
    depth, mag = _check_event(depth_km, magnitude)
    model = _resolve_model(model, lat, lon, depth)
    _check_mechanism(mechanism)
    vs30_arr = np.asarray(vs30, dtype=float)
    if vs30_arr.ndim and not np.all(vs30_arr > 0.0):  # catches NaN too
        raise ValueError("vs30 must be positive (m/s) everywhere")
    repi = distance_km(lat, lon, site_lat, site_lon)
    ff_mag = mag if finite_fault else -math.inf  # -inf: point-source distances at any M
    if model == "bchydro_intraslab":
        # the model is defined on hypocentral distance: no finite-fault correction
        dist = np.sqrt(repi * repi + depth * depth)
        ln_pga, ln_psa = _bchydro_ln(mag, dist, depth, vs30_arr, True, np.asarray(backarc, dtype=bool))
        ln_pgv = ln_psa + math.log(PGV_CM_S_PER_PSA1_G)
    elif model == "bchydro_interface":
        _, dist = finite_fault_distances_km(ff_mag, depth, repi)
        ln_pga, ln_psa = _bchydro_ln(mag, dist, depth, vs30_arr, False, np.asarray(backarc, dtype=bool))
        ln_pgv = ln_psa + math.log(PGV_CM_S_PER_PSA1_G)
    else:
        dist = repi if ff_mag < FINITE_FAULT_MIN_MAGNITUDE else finite_fault_distances_km(ff_mag, depth, repi)[0]
        ln_pga, ln_pgv = _bssa14_ln(mag, dist, vs30_arr, mechanism)
    shape = np.broadcast_shapes(np.shape(repi), np.shape(ln_pga), np.shape(ln_pgv))
    ln_pga, ln_pgv = _full(ln_pga, shape), _full(ln_pgv, shape)
    return Shaking(
        model=model,
        magnitude=mag,
        depth_km=depth,
        pga_g=_out(np.exp(ln_pga)),
        pgv_cm_s=_out(np.exp(ln_pgv)),
        mmi=_out(_mmi_from_ln(ln_pga, ln_pgv)),
        epicentral_km=_out(repi),
        distance_km=_out(dist),
        distance_metric=_DISTANCE_METRIC[model],
        vs30=vs30 if vs30_arr.ndim == 0 else vs30_arr,
    )


def _full(a, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` as an array of ``shape`` (a writable copy only when it must be broadcast)."""
    a = np.asarray(a)
    return a if a.shape == shape else np.broadcast_to(a, shape).copy()


def _out(a):
    """Arrays as they are; a single site's value as a numpy scalar rather than a 0-d array."""
    return a[()] if np.ndim(a) == 0 else a


def total_sigma_ln(model: str, magnitude: float, rjb_km=0.0, vs30=760.0) -> tuple[np.ndarray, np.ndarray]:
    """Total standard deviation (natural log) of ln PGA and ln PGV of a model.

    BSSA14's depends on magnitude, Rjb (km) and Vs30 (m/s); BC Hydro's is
    sqrt(phi^2 + tau^2) = 0.74 at every period, whatever the distance and site. For BC
    Hydro's PGV this is the sigma of PSA(1 s): the scatter of the Newmark-Hall conversion
    itself is not included, so it understates the PGV sigma.
    """
    if model == "bssa14":
        mag = float(magnitude)
        return (
            _bssa14_sigma_ln(_BSSA14_PGA, mag, rjb_km, vs30),
            _bssa14_sigma_ln(_BSSA14_PGV, mag, rjb_km, vs30),
        )
    if model in ("bchydro_interface", "bchydro_intraslab"):
        shape = np.broadcast_shapes(np.shape(rjb_km), np.shape(vs30))
        return (
            np.full(shape, math.hypot(_BCHYDRO_PGA.phi, _BCHYDRO_PGA.tau)),
            np.full(shape, math.hypot(_BCHYDRO_PSA1.phi, _BCHYDRO_PSA1.tau)),
        )
    raise ValueError(f"model must be one of {MODELS}, not {model!r}")


# ------------------------------------------------------- one site, plain math (the twin)


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2.0) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(max(a, 0.0), 1.0)))


def _worden_one(y: float, coeffs) -> float:
    if y <= 0.0:
        return MMI_MIN
    c1, c2, c3, c4, t1 = coeffs
    ly = math.log10(y)
    return c1 + c2 * ly if ly <= t1 else c3 + c4 * ly


def forecast_site(
    lat: float,
    lon: float,
    depth_km: float,
    magnitude: float,
    site_lat: float,
    site_lon: float,
    vs30: float = 760.0,
    model: str | None = "bssa14",
    *,
    mechanism: str = "U",
    backarc: bool = False,
    finite_fault: bool = True,
) -> SiteShaking:
    """The forecast of :func:`forecast` at one site, written out equation by equation.

    Same arguments (all scalars), same results to rounding. A device computes its own
    intensity with this from the event parameters of an alert; the tests hold the
    vectorised code to it.
    """
    depth, mag = _check_event(depth_km, magnitude)
    model = _resolve_model(model, lat, lon, depth)
    _check_mechanism(mechanism)
    vs30 = float(vs30)
    if not vs30 > 0.0:
        raise ValueError("vs30 must be positive (m/s)")
    repi = _haversine_km(lat, lon, site_lat, site_lon)
    rhypo = math.sqrt(repi * repi + depth * depth)
    use_ff = finite_fault and mag >= FINITE_FAULT_MIN_MAGNITUDE
    if use_ff:
        length = rupture_length_km(mag)
        x, d = _strike_averaged_table()
        rjb = max(repi - length * float(np.interp(repi / length, x, d)), 0.0)
        top = max(0.0, depth - 0.5 * rupture_width_km(mag))
        rrup = math.sqrt(rjb * rjb + top * top)
    else:
        rjb, rrup = repi, rhypo

    if model == "bssa14":
        dist = rjb
        ln_y = {}
        for name, k in (("pga", _BSSA14_PGA), ("pgv", _BSSA14_PGV)):
            r = math.sqrt(dist * dist + k.h_km * k.h_km)
            f_e = _bssa14_event_term(k, mag, mechanism)
            f_p = (k.c1 + k.c2 * (mag - k.m_ref)) * math.log(r / k.r_ref_km) + (k.c3 + k.dc3_global) * (r - k.r_ref_km)
            ln_y[name] = f_e + f_p
        pga_rock = math.exp(ln_y["pga"])
        for name, k in (("pga", _BSSA14_PGA), ("pgv", _BSSA14_PGV)):
            f_lin = k.c * math.log(min(vs30, k.v_c_m_s) / k.v_ref_m_s)
            f2 = k.f4 * (math.exp(k.f5 * (min(vs30, 760.0) - 360.0)) - math.exp(k.f5 * (760.0 - 360.0)))
            f_nl = k.f1 + f2 * math.log((pga_rock + k.f3_g) / k.f3_g)
            ln_y[name] += f_lin + f_nl
        ln_pga, ln_pgv = ln_y["pga"], ln_y["pgv"]
    else:
        slab = model == "bchydro_intraslab"
        dist = rhypo if slab else rrup
        f_event = 1.0 if slab else 0.0

        def without_site(k: _BcHydroRow) -> float:
            dc1 = k.dc1_intraslab if slab else k.dc1_interface
            m_break = _BCHYDRO_C1 + dc1
            f_mag = (k.t4 if mag <= m_break else k.t5) * (mag - m_break) + k.t13 * (10.0 - mag) ** 2
            y = (
                k.t1
                + k.t4 * dc1
                + (k.t2 + k.t14 * f_event + k.t3 * (mag - 7.8))
                * math.log(dist + k.c4_km * math.exp(k.t9 * (mag - 6.0)))
                + k.t6 * dist
                + k.t10 * f_event
                + f_mag
            )
            if slab:
                y += k.t11 * (min(depth, 120.0) - 60.0)
            if backarc:
                if slab:
                    y += k.t7 + k.t8 * math.log(max(dist, 85.0) / 40.0)
                else:
                    y += k.t15 + k.t16 * math.log(max(dist, 100.0) / 40.0)
            return y

        def site(k: _BcHydroRow, v: float, pga1000: float) -> float:
            ratio = min(v, _BCHYDRO_V_REF_M_S) / k.v_lin_m_s
            if v < k.v_lin_m_s:
                return (
                    k.t12 * math.log(ratio)
                    - k.b * math.log(pga1000 + k.c)
                    + k.b * math.log(pga1000 + k.c * ratio**k.n)
                )
            return (k.t12 + k.b * k.n) * math.log(ratio)

        free_pga = without_site(_BCHYDRO_PGA)
        # 1000 m/s is above V_lin: the reference rock's site term is linear, needs no PGA1000
        pga1000 = math.exp(free_pga + site(_BCHYDRO_PGA, _BCHYDRO_V_REF_M_S, math.nan))
        ln_pga = free_pga + site(_BCHYDRO_PGA, vs30, pga1000)
        ln_pgv = without_site(_BCHYDRO_PSA1) + site(_BCHYDRO_PSA1, vs30, pga1000) + math.log(PGV_CM_S_PER_PSA1_G)

    pga_g, pgv_cm_s = math.exp(ln_pga), math.exp(ln_pgv)
    mmi = max(_worden_one(pga_g * G_CM_S2, _WORDEN_PGA), _worden_one(pgv_cm_s, _WORDEN_PGV))
    return SiteShaking(
        pga_g=pga_g,
        pgv_cm_s=pgv_cm_s,
        mmi=min(max(mmi, MMI_MIN), MMI_MAX),
        epicentral_km=repi,
        distance_km=dist,
    )


# ------------------------------------------------------------------------ model choice


@dataclass(frozen=True)
class Trench:
    """A trench trace, vertices in order such that the overriding (landward) plate lies
    to the left when walking along it. Degrees."""

    name: str
    lat: tuple[float, ...]
    lon: tuple[float, ...]


# Bird (2003), An updated digital model of plate boundaries, G-cubed 4(3), 1027, file
# PB2002_boundaries.dig: every second vertex (plus the ends and the triple junction) of
# NA/RI (Rivera plate under Jalisco, after DeMets & Wilson 1997), CO\NA (Cocos under
# Mexico, Bird 1999) and CA/CO (Cocos under Central America as far as Nicaragua), ordered
# north-west to south-east: land is on the left.
_MAT_LON_LAT = (
    (-106.890, 21.7992), (-106.808, 21.6403), (-106.624, 21.3106), (-106.525, 21.1838),
    (-106.381, 20.8397), (-106.385, 20.4281), (-106.271, 19.9158), (-105.949, 19.4019),
    (-105.546, 18.9807), (-105.247, 18.7619), (-104.725, 18.3684), (-104.191, 18.1383),
    (-103.200, 17.6155), (-101.703, 17.0256), (-100.336, 16.4424), (-99.4347, 16.1340),
    (-98.5878, 15.7715), (-97.6914, 15.5080), (-96.7270, 15.3601), (-95.7986, 15.2765),
    (-95.1170, 14.8866), (-94.5422, 14.4786), (-93.6558, 14.0161), (-92.9619, 13.7221),
    (-92.2724, 13.2233), (-91.7186, 13.0801), (-90.898, 12.5837), (-89.6190, 12.2948),
    (-88.3190, 11.6968), (-87.4621, 11.0959), (-86.6480, 10.2350),
)  # fmt: skip
MIDDLE_AMERICA_TRENCH = Trench(
    name="Middle America Trench (Jalisco to Nicaragua)",
    lat=tuple(p[1] for p in _MAT_LON_LAT),
    lon=tuple(p[0] for p in _MAT_LON_LAT),
)

#: hypocentres deeper than this under a subduction zone are taken as intraslab (the
#: Mexican plate interface is seismogenic to ~40 km; intraslab quakes such as Puebla 2017
#: are at 50-60 km)
INTRASLAB_MIN_DEPTH_KM = 40.0
#: shallow quakes at most this far landward of the trench are taken as interface events
#: (the Mexican coast is ~50-80 km from the trench; interface ruptures reach ~150 km)
INTERFACE_MAX_LANDWARD_KM = 150.0
#: deep quakes at most this far landward are intraslab (the Cocos slab under central
#: Mexico is ~300 km from the trench at 50-60 km depth)
INTRASLAB_MAX_LANDWARD_KM = 500.0
#: how far seaward of the trace an epicentre may be and still belong to the subduction
#: zone (location error, trace accuracy)
TRENCH_SEAWARD_MARGIN_KM = 50.0


def trench_distance_km(lat: float, lon: float, trench: Trench = MIDDLE_AMERICA_TRENCH) -> float:
    """Signed horizontal distance (km) from a point to a trench trace: positive landward,
    negative seaward; NaN when the point lies beyond either end of the trace.

    Flat-earth (equirectangular) geometry around the point: good to a few percent over the
    few hundred km that matter here.
    """
    tlat = np.asarray(trench.lat, dtype=float)
    tlon = np.asarray(trench.lon, dtype=float)
    kx = KM_PER_DEG * math.cos(math.radians(lat))
    x = (((tlon - lon) + 180.0) % 360.0 - 180.0) * kx
    y = (tlat - lat) * KM_PER_DEG
    ax, ay, bx, by = x[:-1], y[:-1], x[1:], y[1:]
    dx, dy = bx - ax, by - ay
    seg2 = dx * dx + dy * dy
    t_raw = -(ax * dx + ay * dy) / seg2  # the point is the origin
    t = np.clip(t_raw, 0.0, 1.0)
    fx, fy = ax + t * dx, ay + t * dy  # foot of the perpendicular
    dist = np.hypot(fx, fy)
    i = int(np.argmin(dist))
    if (i == 0 and t_raw[0] < 0.0) or (i == len(dist) - 1 and t_raw[-1] > 1.0):
        return math.nan
    # left of the walking direction (cross product > 0) is landward
    side = dx[i] * (0.0 - fy[i]) - dy[i] * (0.0 - fx[i])
    return float(dist[i]) if side >= 0.0 else -float(dist[i])


def choose_model(
    lat: float, lon: float, depth_km: float, trenches: tuple[Trench, ...] = (MIDDLE_AMERICA_TRENCH,)
) -> str:
    """Pick the ground-motion model from the hypocentre. The rule, in order:

    1. ``"bchydro_intraslab"``: deeper than 40 km and within 50 km seaward to 500 km
       landward of a trench (a quake inside the subducting plate);
    2. ``"bchydro_interface"``: 40 km deep or less and within 50 km seaward to 150 km
       landward of a trench (on or near the plate interface, offshore or under the coast);
    3. ``"bssa14"`` otherwise (crustal quakes, and anywhere no trench is known).

    Its limits: depth alone does not tell an interface event from an upper-plate crustal
    quake near the coast, nor a shallow outer-rise or intraslab event from an interface
    one; the early depth of an EEW location is uncertain by ~10-20 km, so an event near
    40 km may switch model between updates; the default trench covers Jalisco to
    Nicaragua only (elsewhere everything is BSSA14 unless you pass a trench). Developed for
    the Mexican subduction zone (quakes M4-7.4 at 5-60 km depth).
    """
    depth = float(depth_km)
    for trench in trenches:
        s = trench_distance_km(lat, lon, trench)
        if not math.isfinite(s) or s < -TRENCH_SEAWARD_MARGIN_KM:
            continue
        if depth > INTRASLAB_MIN_DEPTH_KM and s <= INTRASLAB_MAX_LANDWARD_KM:
            return "bchydro_intraslab"
        if depth <= INTRASLAB_MIN_DEPTH_KM and s <= INTERFACE_MAX_LANDWARD_KM:
            return "bchydro_interface"
    return "bssa14"
