"""Per-step cost of the vectorised picker, against the same work done device by device.

    python bench/bench_picker.py [--devices 10 100 1000 10000] [--budget 1.0] [--json PATH]

Seeded synthetic noise (three axes, a DC offset per axis plus Gaussian noise), one
32-sample packet at 31.25 Hz per device per step (about one second of data, what an
OpenEEW sensor sends). For each network size K, in one run:

``process, all K``
    ``Picker.process`` with the K packets of a step at once: what the engine does.
``process, 1 by 1``
    a second ``Picker`` fed the same packets with one ``process([p])`` call per device:
    the same code without vectorising across devices.
``kernel, vectorised``
    only the numerical kernel of a step: the picker's five IIR filters (trigger high-pass,
    acceleration high-pass, velocity, displacement, Wood-Anderson) on the 3K axis rows with
    ``scipy.signal.lfilter`` (state carried), the characteristic function and
    ``recursive_sta_lta`` over (K x 32).
``kernel, plain twins``
    the same kernel with the plain-Python reference twins ``lfilter_reference`` and
    ``recursive_sta_lta_reference``, one device and axis at a time. Their cost per device
    does not depend on K, so for large K they are timed on the first ``--twin-max-devices``
    devices (default 1,000) and reported per device-packet like the rest.

Costs are microseconds per device-packet (step time / K); ratios are taken within this
run. The network is quiet: no device triggers, so no amplitude tracks are running; the
per-trigger work (AIC onset, amplitude tracks) is not measured here. Each timing is the
best of several steps (or all steps within ``--budget`` seconds), after untimed warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np
import scipy
from scipy import signal

from yujing.ingest import IngestedPacket
from yujing.picker import (
    FilterBank,
    Picker,
    lfilter_reference,
    recursive_sta_lta,
    recursive_sta_lta_reference,
)
from yujing.records import Device
from yujing.settings import PickerSettings

SR = 31.25
N = 32


class Source:
    """Seeded synthetic packets for K devices, step by step."""

    def __init__(self, k: int, seed: int = 2):
        self.k = k
        self.rng = np.random.default_rng(seed)
        self.offset = self.rng.normal(0.0, 0.5, size=(k, 3, 1))
        self.noise = self.rng.uniform(0.02, 0.2, size=(k, 1, 1))
        self.step = 0
        self.t0 = 1.6e9
        self.devices = {f"d{i:05d}": Device(f"d{i:05d}", 16.0 + i * 1e-4, -99.0) for i in range(k)}
        self.ids = list(self.devices)

    def arrays(self) -> np.ndarray:
        """(K, 3, N) samples of the next step."""
        x = self.offset + self.noise * self.rng.standard_normal((self.k, 3, N))
        return x

    def packets(self, x: np.ndarray) -> tuple[list[IngestedPacket], float]:
        end_t = self.t0 + (self.step + 1) * N / SR
        reset = self.step == 0
        pk = [
            IngestedPacket(
                slot=i,
                device_id=self.ids[i],
                end_time_s=end_t,
                arrival_time_s=end_t + 0.3,
                sample_rate_hz=SR,
                samples_gal=x[i].T,  # (N, 3), a transposed view as Ingest makes it
                reset=reset,
                gap_s=0.0,
            )
            for i in range(self.k)
        ]
        self.step += 1
        return pk, end_t + 0.3


def best_step_time(run_step, make_input, warmup: int, budget_s: float, min_steps: int, max_steps: int) -> tuple[float, int]:
    """Best (min) wall time of ``run_step(make_input())`` over timed steps; input making is untimed."""
    for _ in range(warmup):
        run_step(make_input())
    best = float("inf")
    n = 0
    spent = 0.0
    while n < min_steps or (spent < budget_s and n < max_steps):
        inp = make_input()
        t0 = time.perf_counter()
        run_step(inp)
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        n += 1
    return best, n


# --------------------------------------------------------------------------- kernels


class VectorKernel:
    """The picker's per-step numerics over all devices at once, with carried state."""

    def __init__(self, k: int, bank: FilterBank, s: PickerSettings):
        self.k = k
        self.bank = bank
        self.nsta = s.sta_s * SR
        self.nlta = s.lta_s * SR
        self.z = {name: np.zeros((3 * k, len(getattr(bank, name)[1]) - 1)) for name in ("pick", "acc", "vel", "disp", "wa")}
        self.sta = np.zeros(k)
        self.lta = np.zeros(k)

    def _run(self, name, x):
        b, a = getattr(self.bank, name)
        y, self.z[name] = signal.lfilter(b, a, x, axis=1, zi=self.z[name])
        return y

    def step(self, x: np.ndarray):
        k = self.k
        xr = x.reshape(3 * k, N)
        yp = self._run("pick", xr).reshape(k, 3, N)
        acc = self._run("acc", xr)
        vel = self._run("vel", acc)
        self._run("disp", vel)
        self._run("wa", acc)
        cf = np.einsum("kan,kan->kn", yp, yp)
        ratio, self.sta, self.lta = recursive_sta_lta(cf, self.sta, self.lta, self.nsta, self.nlta)
        return ratio


class TwinKernel:
    """The same numerics with the plain reference twins, device by device, axis by axis."""

    def __init__(self, k: int, bank: FilterBank, s: PickerSettings):
        self.k = k
        self.bank = bank
        self.nsta = s.sta_s * SR
        self.nlta = s.lta_s * SR
        self.z = {
            name: [[np.zeros(len(getattr(bank, name)[1]) - 1) for _ in range(3)] for _ in range(k)]
            for name in ("pick", "acc", "vel", "disp", "wa")
        }
        self.sta = [0.0] * k
        self.lta = [0.0] * k

    def step(self, x: np.ndarray):
        bk = self.bank
        z = self.z
        for i in range(self.k):
            cf = np.zeros(N)
            for ax in range(3):
                xi = x[i, ax]
                yp, z["pick"][i][ax] = lfilter_reference(bk.pick[0], bk.pick[1], xi, z["pick"][i][ax])
                acc, z["acc"][i][ax] = lfilter_reference(bk.acc[0], bk.acc[1], xi, z["acc"][i][ax])
                vel, z["vel"][i][ax] = lfilter_reference(bk.vel[0], bk.vel[1], acc, z["vel"][i][ax])
                _, z["disp"][i][ax] = lfilter_reference(bk.disp[0], bk.disp[1], vel, z["disp"][i][ax])
                _, z["wa"][i][ax] = lfilter_reference(bk.wa[0], bk.wa[1], acc, z["wa"][i][ax])
                cf += yp * yp
            _, self.sta[i], self.lta[i] = recursive_sta_lta_reference(cf, self.sta[i], self.lta[i], self.nsta, self.nlta)


def check_twins_agree(bank: FilterBank, s: PickerSettings, k: int = 5) -> float:
    """Largest relative difference of the STA/LTA ratio between the two kernels (sanity)."""
    src = Source(k, seed=7)
    v, t = VectorKernel(k, bank, s), TwinKernel(k, bank, s)
    worst = 0.0
    for _ in range(3):
        x = src.arrays()
        v.step(x)
        t.step(x)
        worst = max(worst, float(np.max(np.abs(v.sta - np.array(t.sta)) / np.maximum(np.abs(v.sta), 1e-30))))
    return worst


def picker_state_mb(p: Picker) -> float:
    arrays = [v for v in vars(p).values() if isinstance(v, np.ndarray)]
    arrays += [getattr(p._buf, n) for n in ("t",) + p._buf.NAMES]
    return sum(a.nbytes for a in arrays) / 1e6


# --------------------------------------------------------------------------- main


def bench_k(k: int, budget_s: float, twin_max: int, seed: int) -> dict:
    s = PickerSettings()
    bank = FilterBank.design(SR, s)
    row: dict = {"devices": k}
    big = k >= 5000

    # Picker.process, all K at once
    src = Source(k, seed)
    pk = Picker(s)
    best, n = best_step_time(lambda a: pk.process(a[0], a[1], src.devices), lambda: src.packets(src.arrays()),
                             warmup=2, budget_s=budget_s, min_steps=3, max_steps=500)
    row["process_all_us"] = best / k * 1e6
    row["process_all_steps"] = n
    row["picker_state_mb"] = picker_state_mb(pk)

    # Picker.process, one device per call
    src = Source(k, seed)
    p1 = Picker(s)

    def one_by_one(a):
        pkts, now = a
        for p in pkts:
            p1.process([p], now, src.devices)

    best, n = best_step_time(one_by_one, lambda: src.packets(src.arrays()),
                             warmup=1, budget_s=budget_s, min_steps=2 if big else 3, max_steps=200)
    row["process_1by1_us"] = best / k * 1e6
    row["process_1by1_steps"] = n

    # kernels
    src = Source(k, seed)
    vk = VectorKernel(k, bank, s)
    best, n = best_step_time(vk.step, src.arrays, warmup=2, budget_s=budget_s, min_steps=3, max_steps=1000)
    row["kernel_vec_us"] = best / k * 1e6
    row["kernel_vec_steps"] = n

    kt = min(k, twin_max)
    src = Source(kt, seed)
    tk = TwinKernel(kt, bank, s)
    best, n = best_step_time(tk.step, src.arrays, warmup=1, budget_s=budget_s, min_steps=3, max_steps=200)
    row["kernel_twin_us"] = best / kt * 1e6
    row["kernel_twin_steps"] = n
    row["kernel_twin_devices_timed"] = kt

    row["x_process_all_vs_1by1"] = row["process_1by1_us"] / row["process_all_us"]
    row["x_kernel_vec_vs_twin"] = row["kernel_twin_us"] / row["kernel_vec_us"]
    row["x_process_all_vs_twin"] = row["kernel_twin_us"] / row["process_all_us"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[10, 100, 1000, 10000])
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timed steps per measurement (default 1)")
    ap.add_argument("--twin-max-devices", type=int, default=1000, help="devices the plain twins are timed on (default 1000)")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    env = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    print(f"bench_picker  {env['date_utc']}  {env['cpus']} CPUs  Python {env['python']}  numpy {env['numpy']}  "
          f"scipy {env['scipy']}  load average {env['loadavg_start']}")
    s = PickerSettings()
    diff = check_twins_agree(FilterBank.design(SR, s), s)
    print(f"sanity: vectorised kernel vs plain twins, largest relative STA difference {diff:.1e}")
    print(f"{N}-sample packets at {SR} Hz, one per device per step; microseconds per device-packet (best step)\n")

    hdr = (f"{'devices':>8} | {'process':>9} {'process':>9} {'speed-up':>8} | {'kernel':>9} {'kernel':>9} {'speed-up':>8} "
           f"| {'process all':>11} | {'picker':>8}")
    hdr2 = (f"{'K':>8} | {'all K':>9} {'1 by 1':>9} {'':>8} | {'vector':>9} {'twins':>9} {'':>8} "
            f"| {'vs twins':>11} | {'state MB':>8}")
    print(hdr)
    print(hdr2)
    print("-" * len(hdr))
    rows = []
    for k in args.devices:
        r = bench_k(k, args.budget, args.twin_max_devices, args.seed)
        rows.append(r)
        twin_note = "" if r["kernel_twin_devices_timed"] == k else f"  (twins timed on {r['kernel_twin_devices_timed']:,} devices)"
        print(f"{k:>8,} | {r['process_all_us']:9.2f} {r['process_1by1_us']:9.1f} {r['x_process_all_vs_1by1']:7.0f}x "
              f"| {r['kernel_vec_us']:9.2f} {r['kernel_twin_us']:9.1f} {r['x_kernel_vec_vs_twin']:7.0f}x "
              f"| {r['x_process_all_vs_twin']:10.0f}x | {r['picker_state_mb']:8.1f}{twin_note}", flush=True)
    total = time.perf_counter() - t_start
    env["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nreal-time budget: one step here is {N / SR:.3f} s of data, so K devices need "
          f"K x (us per device-packet) < {N / SR * 1e6:,.0f} us per step")
    for r in rows:
        step_ms = r["process_all_us"] * r["devices"] / 1e3
        print(f"  {r['devices']:>6,} devices: {step_ms:8.2f} ms per step, {N / SR * 1e3 / step_ms:8.0f}x real time")
    print(f"total {total:.0f} s; load average {env['loadavg_start']} -> {env['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "packet_samples": N, "sample_rate_hz": SR, "rows": rows, "total_s": total}, fh, indent=2)
            fh.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
