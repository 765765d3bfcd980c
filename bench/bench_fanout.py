"""Alert fan-out: one alert to 10,000 MQTT-connected devices, and to 100,000 NATS subscriptions.

What it measures, for each broker in one run, with the same subscribers and the same alert:

* **connect**: time for one subscriber process to open N connections (256 at a time), each
  CONNECT + SUBSCRIBE to its area topic at QoS 1 (MQTT) or SUB + PING/PONG (NATS);
* **fan-out**: one alert (1,500 bytes, retained, QoS 1, as ``MqttLink`` publishes it) put
  on the 19 area topics ``yj/v1/alert/<res3>`` of the resolution-3 cells within two rings
  of Luding's, the subscribers spread evenly over them; time from the publisher's first
  write to each delivery (p50) and to the last one (max), ``--repeats`` times;
* **broker memory**: the broker process's RSS before and with the subscribers connected;
* **event-loop stall** (embedded broker only): the longest a 2 ms probe task in the broker's
  loop was late, during the connect storm and during each fan-out; the probe stands in for
  the engine that shares the loop in ``yujing serve``.

Brokers (``--brokers``, default all): ``embedded`` (yujing's :class:`EmbeddedBroker`, in a
process of its own, as ``Server.start`` runs it), ``mosquitto`` (the system's, at
127.0.0.1:1883), ``nats-mqtt`` (a nats-server of our own with JetStream and its MQTT
listener), ``nats`` (the same server, native protocol, N connections x 1 subscription), and
``nats100k``: the issue's "100,000 subscriptions through NATS in <= 3 s", as 100 connections
(edge gateways) x 1,000 subscriptions each on the 19 area subjects ``yj.v1.alert.<res3>``.

Processes: this one orchestrates and publishes; the subscribers live in one child process
(raw asyncio protocols, ~3 kB per connection; its reading is part of every number, the same
for every broker); the broker in another. Times are CLOCK_MONOTONIC, shared by processes on
one machine. Targets: 10,000 MQTT devices in <= 2 s, 100,000 NATS subscriptions in <= 3 s
(PASS/MISS on the slowest repeat). Nothing here fails because a number is slow.

    python bench/bench_fanout.py                          # everything, ~2-4 min
    python bench/bench_fanout.py --brokers embedded --subscribers 10000 --repeats 5
    python bench/bench_fanout.py --markdown               # the table for docs/brokers.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HDR = struct.Struct("<Id")  # seq, publisher's perf_counter at the first write
PAYLOAD_BYTES = 1500
LUDING = (29.59, 102.08)
MOSQUITTO = ("127.0.0.1", 1883)


def area_topics(k: int = 2) -> list[str]:
    import h3

    c = h3.latlng_to_cell(*LUDING, 3)
    return [f"yj/v1/alert/{x}" for x in sorted(h3.grid_disk(c, k))]


def rss_mb(pid) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# =============================================================== child: broker host


async def broker_host(port: int) -> None:
    """EmbeddedBroker as ``Server.start`` runs it, plus a loop-lag probe; stdin commands:
    ``mark`` (reset the probe), ``report`` (max stall since the mark, RSS)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from yujing.bus.mqtt_broker import EmbeddedBroker

    raise_nofile()
    b = EmbeddedBroker("127.0.0.1", port)
    await b.start()
    lag = {"max": 0.0, "over20": 0}

    async def probe(tick=0.002):
        while True:
            t = time.perf_counter()
            await asyncio.sleep(tick)
            d = time.perf_counter() - t - tick
            lag["max"] = max(lag["max"], d)
            lag["over20"] += d > 0.02

    import gc

    gct = [0.0]

    def on_gc(phase, info):  # the longest garbage-collection pause, also since the mark
        if phase == "start":
            gct[0] = time.perf_counter()
        else:
            lag["gc_max"] = max(lag.get("gc_max", 0.0), time.perf_counter() - gct[0])

    gc.callbacks.append(on_gc)
    pt = asyncio.create_task(probe())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"port": b.port, "pid": os.getpid()}), flush=True)
    while line := (await reader.readline()).decode().split():
        if line[0] == "pub":  # in-process, as MqttLink publishes alerts through an embedded broker
            seq = int(line[1])
            t0 = time.perf_counter()
            payload = HDR.pack(seq, t0) + b"\xa5" * (PAYLOAD_BYTES - HDR.size)
            for t in area_topics():
                b.publish(t, payload, 1, True)
            out = {"ok": 1}
        elif line[0] == "mark":
            lag.update(max=0.0, over20=0, gc_max=0.0)
            out = {"ok": 1}
        else:
            out = {"max_stall_ms": round(lag["max"] * 1e3, 1), "stalls_over_20ms": lag["over20"],
                   "gc_max_ms": round(lag.get("gc_max", 0.0) * 1e3, 1),
                   "rss_mb": rss_mb("self"), "connected": b.connected, "counts": dict(b.counts)}
        print(json.dumps(out), flush=True)
    pt.cancel()
    await b.stop()


# =============================================================== child: subscribers

ARRIVALS: dict[int, list[float]] = {}


def _note(buf, p: int) -> None:
    seq, t0 = HDR.unpack_from(buf, p)
    ARRIVALS.setdefault(seq, []).append(time.perf_counter() - t0)


class MqttSub(asyncio.Protocol):
    """A phone's alert subscription, as little as it takes: CONNECT, SUBSCRIBE, read."""

    __slots__ = ("tr", "framer", "cid", "topic", "qos", "ready")

    def __init__(self, cid, topic, qos, ready):
        from yujing.bus.mqtt_codec import Framer

        self.cid, self.topic, self.qos, self.ready = cid, topic, qos, ready
        self.framer = Framer()
        self.tr = None

    def connection_made(self, tr):
        from yujing.bus.mqtt_codec import connect_packet

        self.tr = tr
        tr.write(connect_packet(self.cid, keepalive_s=0))

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.cid}: lost ({exc})"))

    def data_received(self, data):
        from yujing.bus.mqtt_codec import subscribe_packet

        for b0, body in self.framer.feed(data):
            t = b0 >> 4
            if t == 3:
                q = (b0 >> 1) & 3
                p = 2 + ((body[0] << 8) | body[1])
                if q:
                    self.tr.write(b"\x40\x02" + bytes(body[p : p + 2]))
                    p += 2
                if len(body) - p >= HDR.size:
                    _note(body, p)
            elif t == 2:
                if body[1] != 0:
                    self.ready.set_exception(ConnectionError(f"CONNACK {body[1]}"))
                    return
                self.tr.write(subscribe_packet(1, [(self.topic, self.qos)]))
            elif t == 9 and not self.ready.done():
                if body[2] == 0x80:
                    self.ready.set_exception(ConnectionError(f"{self.cid}: subscription refused"))
                else:
                    self.ready.set_result(self)

    def close(self):
        if self.tr is not None and not self.tr.is_closing():
            self.tr.write(b"\xe0\x00")
            self.tr.close()


class NatsSub(asyncio.Protocol):
    """A raw NATS client holding ``subjects`` subscriptions: CONNECT, SUB..., PING; ready
    at the PONG (the server has every SUB by then)."""

    __slots__ = ("tr", "buf", "subjects", "ready", "name")

    def __init__(self, name, subjects, ready):
        self.name, self.subjects, self.ready = name, subjects, ready
        self.buf = b""
        self.tr = None

    def connection_made(self, tr):
        self.tr = tr
        opts = {"verbose": False, "pedantic": False, "name": self.name, "lang": "raw", "version": "0", "protocol": 1}
        subs = "".join(f"SUB {s} {k + 1}\r\n" for k, s in enumerate(self.subjects))
        tr.write((f"CONNECT {json.dumps(opts)}\r\n" + subs + "PING\r\n").encode())

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.name}: lost ({exc})"))

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        i, n = 0, len(buf)
        while i < n:
            e = buf.find(b"\r\n", i)
            if e < 0:
                break
            if buf.startswith(b"MSG ", i):
                size = int(buf[buf.rfind(b" ", i, e) + 1 : e])
                if e + 2 + size + 2 > n:
                    break
                if size >= HDR.size:
                    _note(buf, e + 2)
                i = e + 2 + size + 2
                continue
            if buf.startswith(b"PING", i):
                self.tr.write(b"PONG\r\n")
            elif buf.startswith(b"PONG", i):
                if not self.ready.done():
                    self.ready.set_result(self)
            elif buf.startswith(b"-ERR", i) and not self.ready.done():
                self.ready.set_exception(ConnectionError(buf[i:e].decode()))
            i = e + 2
        self.buf = buf[i:] if i < n else b""

    def close(self):
        if self.tr is not None and not self.tr.is_closing():
            self.tr.close()


async def subscriber_host() -> None:
    """stdin commands: ``open mqtt HOST PORT N QOS`` / ``open nats HOST PORT CONNS
    SUBS_PER_CONN`` (topics: the 19 area topics, round robin), ``wait SEQ N TIMEOUT``,
    ``close``; one JSON line each on stdout."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    raise_nofile()
    topics = area_topics()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    subs: list = []
    print(json.dumps({"pid": os.getpid()}), flush=True)
    while line := (await reader.readline()).decode().split():
        cmd = line[0]
        if cmd == "open":
            kind, host, port, a, b = line[1], line[2], int(line[3]), int(line[4]), int(line[5])
            sem = asyncio.Semaphore(256)
            rss0 = rss_mb("self")

            async def one(k):
                async with sem:
                    for attempt in range(5):
                        fut = loop.create_future()
                        try:
                            if kind == "mqtt":
                                await loop.create_connection(
                                    lambda: MqttSub(f"fan{k}", topics[k % len(topics)], b, fut), host, port)
                            else:
                                subj = [topics[(k * b + j) % len(topics)].replace("/", ".") for j in range(b)]
                                await loop.create_connection(lambda: NatsSub(f"fan{k}", subj, fut), host, port)
                            subs.append(await asyncio.wait_for(fut, 60))
                            return None
                        except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
                            err = exc
                            await asyncio.sleep(0.2 * (attempt + 1))
                    return repr(err)

            t = time.perf_counter()
            errs = [e for e in await asyncio.gather(*(one(k) for k in range(a))) if e]
            out = {"connect_s": round(time.perf_counter() - t, 3), "connected": len(subs), "errors": len(errs),
                   "first_error": errs[0] if errs else None, "client_rss_mb": round(rss_mb("self") - rss0, 1)}
        elif cmd == "wait":
            seq, n, timeout = int(line[1]), int(line[2]), float(line[3])
            t = time.perf_counter()
            while len(ARRIVALS.get(seq, ())) < n and time.perf_counter() - t < timeout:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.1)  # duplicates, if any
            lat = sorted(ARRIVALS.get(seq, []))
            out = {"got": len(lat)}
            if lat:
                out.update(p50_ms=round(1e3 * statistics.median(lat), 1), p99_ms=round(1e3 * lat[int(0.99 * (len(lat) - 1))], 1),
                           max_ms=round(1e3 * lat[-1], 1), min_ms=round(1e3 * lat[0], 1))
        elif cmd == "close":
            for s in subs:
                s.close()
            subs.clear()
            await asyncio.sleep(0.5)
            out = {"ok": 1}
        else:
            out = {"error": f"unknown command {cmd}"}
        print(json.dumps(out), flush=True)


# =============================================================== orchestrator


class Child:
    def __init__(self, args: list[str]):
        self.p = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"child {args} did not start")
        self.info = json.loads(line)

    async def cmd(self, s: str) -> dict:
        def do():
            self.p.stdin.write(s + "\n")
            self.p.stdin.flush()
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"child died on {s!r}")
            return json.loads(line)

        return await asyncio.to_thread(do)

    def stop(self):
        try:
            self.p.stdin.close()
            self.p.wait(20)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            self.p.kill()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class NatsServer:
    def __init__(self):
        exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.dir = tempfile.mkdtemp(prefix="yj-bench-nats-")
        self.port, self.mport = free_port(), free_port()
        conf = os.path.join(self.dir, "nats.conf")
        with open(conf, "w") as f:
            f.write(f'server_name: yjbench\nlisten: 127.0.0.1:{self.port}\nmax_payload: 1MB\n'
                    f'jetstream {{ store_dir: "{self.dir}/js" }}\nmqtt {{ listen: 127.0.0.1:{self.mport} }}\n')
        self.p = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t = time.monotonic()
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.mport), 0.2).close()
                break
            except OSError:
                if self.p.poll() is not None or time.monotonic() - t > 15:
                    raise SystemExit("nats-server with MQTT did not start")
                time.sleep(0.05)
        self.pid = self.p.pid

    def stop(self):
        self.p.terminate()
        self.p.wait(20)
        shutil.rmtree(self.dir, ignore_errors=True)


def mosquitto_pid() -> int | None:
    try:
        return int(open("/run/mosquitto/mosquitto.pid").read().strip())
    except (OSError, ValueError):
        out = subprocess.run(["pgrep", "-x", "mosquitto"], capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None


SEQ = [0]


async def mqtt_publisher(host: str, port: int):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from yujing.bus.mqtt_codec import connect_packet

    r, w = await asyncio.open_connection(host, port)
    w.write(connect_packet(f"fan-publisher-{os.getpid()}", keepalive_s=0))
    await r.readexactly(4)

    async def drain():
        while await r.read(65536):
            pass

    return w, asyncio.create_task(drain())


async def run_broker(name: str, a, subs: Child, nats: NatsServer | None) -> dict:
    from yujing.bus.mqtt_codec import publish_packet

    topics = area_topics()
    host = "127.0.0.1"
    bhost = None
    if name == "embedded":
        bhost = Child(["--_broker-host", str(free_port())])
        name = "embedded" if a.embedded_publish == "client" else "embedded (in-process publish)"
        port, bpid = bhost.info["port"], bhost.info["pid"]
    elif name == "mosquitto":
        port, bpid = MOSQUITTO[1], mosquitto_pid()
    elif name == "nats-mqtt":
        port, bpid = nats.mport, nats.pid
    else:
        port, bpid = nats.port, nats.pid
    await asyncio.sleep(0.3)
    row = {"broker": name, "broker_rss_before_mb": rss_mb(bpid)}
    if name == "nats100k":
        n_conn, per, n_deliveries = a.nats_connections, a.nats_subs_per_connection, a.nats_connections * a.nats_subs_per_connection
        row["shape"] = f"{n_conn} connections x {per:,} subscriptions"
    elif name == "nats":
        n_conn, per, n_deliveries = a.subscribers, 1, a.subscribers
        row["shape"] = f"{n_conn:,} connections x 1 subscription"
    else:
        n_conn, per, n_deliveries = a.subscribers, a.sub_qos, a.subscribers
        row["shape"] = f"{n_conn:,} MQTT connections, QoS {a.sub_qos}"
    if bhost:
        await bhost.cmd("mark")
    kind = "nats" if name.startswith("nats") and name != "nats-mqtt" else "mqtt"
    opened = await subs.cmd(f"open {kind} {host} {port} {n_conn} {per}")
    row.update(connect_s=opened["connect_s"], connected=opened["connected"], connect_errors=opened["errors"],
               first_error=opened["first_error"], client_rss_mb=opened["client_rss_mb"])
    if bhost:
        row["connect_storm_max_stall_ms"] = (await bhost.cmd("report"))["max_stall_ms"]
    await asyncio.sleep(1.0 if kind == "mqtt" else 0.3)
    row["broker_rss_mb"] = rss_mb(bpid)
    reps = []
    if kind == "mqtt":
        w, drain = await mqtt_publisher(host, port)
    else:
        import nats as natspy

        nc = await natspy.connect(f"nats://{host}:{port}")
    expected = opened["connected"] if name not in ("nats100k",) else opened["connected"] * per
    for rep in range(a.repeats):
        SEQ[0] += 1
        seq = SEQ[0]
        if bhost:
            await bhost.cmd("mark")
        t0 = time.perf_counter()
        payload = HDR.pack(seq, t0) + b"\xa5" * (PAYLOAD_BYTES - HDR.size)
        if bhost and a.embedded_publish == "in-process":
            await bhost.cmd(f"pub {seq}")
        elif kind == "mqtt":
            w.write(b"".join(publish_packet(t, payload, 1, True, packet_id=(seq * 32 + i) % 65535 + 1) for i, t in enumerate(topics)))
        else:
            for t in topics:
                await nc.publish(t.replace("/", "."), payload)
            await nc.flush()
        r = await subs.cmd(f"wait {seq} {expected} {a.timeout_s}")
        if bhost:
            br = await bhost.cmd("report")
            r["max_stall_ms"], r["gc_max_ms"] = br["max_stall_ms"], br["gc_max_ms"]
        r["rep"] = rep + 1
        reps.append(r)
        print(f"    {name:9s} repeat {rep + 1}: got {r['got']:,}/{expected:,}, p50 {r.get('p50_ms')} ms, last {r.get('max_ms')} ms"
              + (f", broker loop stall {r['max_stall_ms']} ms (longest GC pause {r['gc_max_ms']} ms)" if bhost else ""),
              flush=True)
        await asyncio.sleep(0.5)
    if kind == "mqtt":
        w.write(b"".join(publish_packet(t, b"", 0, True) for t in topics))  # clear the retained alert
        await w.drain()
        await asyncio.sleep(0.3)
        w.close()
        drain.cancel()
    else:
        await nc.close()
    row["repeats"] = reps
    row["expected"] = expected
    ok = [x for x in reps if x["got"] >= expected]
    row["all_delivered"] = len(ok) == len(reps)
    if reps and all("max_ms" in x for x in reps):
        row["p50_ms_median"] = round(statistics.median(x["p50_ms"] for x in reps), 1)
        row["last_ms_median"] = round(statistics.median(x["max_ms"] for x in reps), 1)
        row["last_ms_worst"] = max(x["max_ms"] for x in reps)
    if bhost:
        row["fanout_max_stall_ms"] = max(x["max_stall_ms"] for x in reps)
    await subs.cmd("close")
    if bhost:
        bhost.stop()
    await asyncio.sleep(2.0)  # let the broker forget them before the next one
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    L = [f"Measured {meta['when']} on {meta['cpus']} CPUs (load {meta['load']}), commit {meta['commit']}, "
         f"`python bench/bench_fanout.py {meta['argv']}`; {meta['repeats']} fan-outs each.", "",
         "| broker | subscribers | connect | broker RSS (before -> with subs) | fan-out p50 | last delivery, median / worst | all delivered | broker loop stall (connect / fan-out) |",
         "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        rss = f"{r['broker_rss_before_mb']:.0f} -> {r['broker_rss_mb']:.0f} MB" if r.get("broker_rss_mb") else "n/a"
        fan = f"{r['p50_ms_median']:.0f} ms" if "p50_ms_median" in r else "-"
        last = f"{r['last_ms_median']:.0f} / {r['last_ms_worst']:.0f} ms" if "last_ms_median" in r else "-"
        stall = f"{r['connect_storm_max_stall_ms']:.0f} / {r['fanout_max_stall_ms']:.0f} ms" if "fanout_max_stall_ms" in r else "-"
        L.append(f"| {r['broker']} | {r['shape']} | {r['connect_s']:.2f} s | {rss} | {fan} | {last} | "
                 f"{'yes' if r['all_delivered'] else 'NO'} ({r['expected']:,}) | {stall} |")
    return "\n".join(L)


async def orchestrate(a) -> int:
    raise_nofile()
    brokers = a.brokers.split(",")
    subs = Child(["--_subscribers"])
    rows = []
    try:
        for b in brokers:
            print(f"  {b}... (load {os.getloadavg()[0]:.2f})", flush=True)
            # a fresh nats-server for each NATS case: Go keeps the memory it has used
            nats = NatsServer() if b.startswith("nats") else None
            try:
                row = await run_broker(b, a, subs, nats)
            finally:
                if nats:
                    nats.stop()
            row["load_before"] = round(os.getloadavg()[0], 2)
            rows.append(row)
    finally:
        subs.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__)).stdout.strip()
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "load": f"{os.getloadavg()[0]:.2f}", "commit": commit or "?", "argv": " ".join(sys.argv[1:]), "repeats": a.repeats,
            "python": platform.python_version()}
    print()
    for r in rows:
        target = 3000 if r["broker"] == "nats100k" else 2000
        worst = r.get("last_ms_worst")
        verdict = "PASS" if worst is not None and r["all_delivered"] and worst <= target else "MISS"
        r["target_ms"], r["verdict"] = target, verdict
        print(f"{r['broker']:10s} {r['shape']:38s} connect {r['connect_s']:6.2f} s  broker RSS "
              f"{r['broker_rss_before_mb'] or 0:6.1f} -> {r['broker_rss_mb'] or 0:6.1f} MB  p50 {r.get('p50_ms_median', '-')} ms  "
              f"last {r.get('last_ms_median', '-')} / worst {worst} ms  {verdict} (<= {target / 1000:.0f} s)"
              + (f"  loop stall connect {r['connect_storm_max_stall_ms']} / fan-out {r['fanout_max_stall_ms']} ms"
                 if "fanout_max_stall_ms" in r else ""))
    if a.markdown:
        print()
        print(markdown(rows, meta))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0 if all(r["connected"] > 0 for r in rows) else 1  # a slow number is not a failure


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_broker-host":
        asyncio.run(broker_host(int(sys.argv[2])))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--_subscribers":
        asyncio.run(subscriber_host())
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default="embedded,mosquitto,nats-mqtt,nats,nats100k",
                    help="comma-separated: embedded, mosquitto, nats-mqtt, nats, nats100k (default: all, in one run)")
    ap.add_argument("--subscribers", type=int, default=10_000, help="MQTT (and native NATS) subscriber connections (default 10,000)")
    ap.add_argument("--sub-qos", type=int, default=1, choices=(0, 1), help="MQTT subscription QoS (default 1, as phones subscribe)")
    ap.add_argument("--nats-connections", type=int, default=100, help="nats100k: connections (default 100)")
    ap.add_argument("--nats-subs-per-connection", type=int, default=1000, help="nats100k: subscriptions each (default 1,000)")
    ap.add_argument("--embedded-publish", choices=("client", "in-process"), default="client",
                    help="embedded broker: the alert comes from an MQTT client connection (default; MqttLink at f779b71) "
                         "or from EmbeddedBroker.publish in the broker's process")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout-s", type=float, default=30.0, help="give up waiting for deliveries after this long")
    ap.add_argument("--markdown", action="store_true", help="also print the table for docs/brokers.md")
    ap.add_argument("--json", help="write all results here")
    a = ap.parse_args()
    print(f"# bench_fanout: {a.brokers}; {a.subscribers:,} subscribers; {a.repeats} repeats; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}, Python {platform.python_version()}", flush=True)
    return asyncio.run(orchestrate(a))


if __name__ == "__main__":
    raise SystemExit(main())
