"""Device security across the workers of a scale-out (issue 12), against a real nats-server
(JetStream) started for each test on a port of its own (conftest.py's ``nats_url``).

Every worker gets a copy of one credentials file (one master: a key issued through one
worker verifies on every other); enrolments are shared through the KV bucket YJ_ENROL
(``yujing.scaleout.SharedIssuer``). Through the real API routes of two workers:

- a pseudonym enrolled through worker A verifies on worker B (a signed trigger read from
  the stream by B's engine) and counts as new there (``new_device_s``);
- enrolling it again through B is refused (first come); two workers enrolling one
  pseudonym at once hand out one key; a request that loses the race hands out none;
- a worker with another master refuses to start; a worker that starts later imports the
  enrolments there are;
- after the retention period the entries are gone from the bucket and from every worker;
- token accounts and tokens go by the server's clock, not the engine clock the API's
  Service has (0 before the shard's first step); so do a device's data-rights request
  (its proof's time) and the audit rows the API writes.

Run: ``python -m pytest -q tests/test_scaleout_enrol.py``
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import h3
import httpx
import nats.js.errors
import pytest

from yujing import protocol, tokens
from yujing.api.app import create_app
from yujing.api.auth import create_key
from yujing.bus import nats as ynats
from yujing.retention import purge_memory
from yujing.scaleout import KV_CREDS, KV_ENROL, Worker, WorkerConfig
from yujing.security import Credential, Issuer, Signer, data_proof
from yujing.service import ServiceConfig
from yujing.store import open_store

REGION_B = "8140fffffffffff"  # Luding's res-1 region: worker B's home
REGION_A = h3.latlng_to_cell(40.0, -100.0, 1)  # far away: worker A's home
CELL_B = h3.cell_to_center_child(REGION_B, 5)  # where B's test device reports from
CELL_A = h3.cell_to_center_child(REGION_A, 5)


async def _until(pred, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


def _worker(url: str, wid: str, creds, home: str, **cfg) -> Worker:
    return Worker([url], WorkerConfig(worker_id=wid, home_regions=(home,), lookback_s=0, **cfg),
                  service_config=ServiceConfig(credentials_file=str(creds)))


def _client(w: Worker) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(w.main_service)), base_url="http://w")


def _trigger(device: str, t: float, cell: str = CELL_B) -> protocol.TriggerMsg:
    return protocol.TriggerMsg(device=device, cell=cell, sent_s=t, onset_s=t - 0.5, window_s=1.0, pga_gal=30.0,
                               pgv_cm_s=1.0, pd_cm=0.05)


def _run(coro_fn, timeout_s: float = 120.0):
    async def bounded():
        async with asyncio.timeout(timeout_s):
            await coro_fn()

    asyncio.run(bounded())


def test_enrolments_hold_across_workers(nats_url, tmp_path):
    master = tmp_path / "deployment.credentials"
    Issuer.load(master)  # the operator makes the file once and gives every worker a copy
    copies = {}
    for w in ("a", "b", "c"):
        copies[w] = tmp_path / f"{w}.credentials"
        shutil.copy(master, copies[w])
    other = tmp_path / "other.credentials"  # a worker given a file of its own: another master

    async def go():
        nc = await ynats.connect([nats_url], "test")
        js = nc.jetstream(timeout=5)
        a = _worker(nats_url, "a", copies["a"], REGION_A)
        b = _worker(nats_url, "b", copies["b"], REGION_B)
        workers = [a, b]
        try:
            for w in (a, b):
                await w.start()
            await _until(lambda: all(s.live for w in (a, b) for s in w.shards), 10, "workers live")
            kv = await js.key_value(KV_ENROL)
            new_s = a.settings.associate.new_device_s
            assert a.issuer.kid == b.issuer.kid and a.issuer is not b.issuer

            async with _client(a) as ca, _client(b) as cb:
                # --- enrolled through A
                t0 = time.perf_counter()
                r = await ca.post("/api/enrol", json={"pseudonyms": ["dev-a1", "dev-a2"]})
                took_ms = (time.perf_counter() - t0) * 1e3
                assert r.status_code == 200, r.text
                body = r.json()
                assert [c["device"] for c in body["credentials"]] == ["dev-a1", "dev-a2"] and not body["refused"]
                assert body["kid"] == b.issuer.kid.hex()
                cred = Credential("dev-a1", bytes.fromhex(body["credentials"][0]["key"]), bytes.fromhex(body["kid"]))
                entry = json.loads((await kv.get(a.issuer.kv_key("dev-a1"))).value)
                assert entry["p"] == "dev-a1" and entry["v"] is False and set(entry) == {"p", "t", "v"}
                # --- B learns it through its watch, and counts it as new
                seen = await _until(lambda: "dev-a1" in b.issuer.enrolled, 5, "B importing A's enrolment")
                now = time.time()
                assert b.main_service.engine.assoc.is_new("dev-a1", now, new_s)
                assert b.issuer.enrolled["dev-a1"] == a.issuer.enrolled["dev-a1"] == entry["t"]
                # stamped with the server clock (the shard's engine clock may still be at 0)
                assert abs(entry["t"] - now) < 5
                # control: a pseudonym nobody enrolled is not "new" (the engine's own devices)
                assert not b.main_service.engine.assoc.is_new("never-enrolled", now, new_s)
                # --- B verifies the device's trigger, read from the stream by its engine
                topic, payload = Signer(creds={"dev-a1": cred}).wire("trig", _trigger("dev-a1", now))
                forged = Signer(Issuer()).payload(topic, _trigger("dev-a2", now))  # another master's key
                for p in (payload, forged):
                    await js.publish(topic.replace("/", "."), p)
                guard = b.main_service.guard
                await _until(lambda: guard.creds.get("dev-a1") is not None and guard.creds["dev-a1"].hw == 1
                             and b.main_service.rejects.by_reason().get("unknown_credential"), 10,
                             "B's engine reading both triggers")
                reasons = b.main_service.rejects.by_reason()
                assert reasons.get("unknown_credential") == 1 and "bad_signature" not in reasons, reasons
                print(f"\nenrol 2 through A: {took_ms:.1f} ms; B imported it {seen * 1e3:.0f} ms after the answer; "
                      f"B's door: dev-a1 accepted (seq 1), the other master's message {reasons}")

                # --- first come across the deployment
                r = await cb.post("/api/enrol", json={"pseudonyms": ["dev-a1"]})
                assert r.status_code == 200 and r.json()["credentials"] == []
                assert "enrolled already" in r.json()["refused"][0]["reason"]

                # --- a request that loses the race (B has not heard of the winner yet) hands out no key
                hold = b.issuer.watched
                b.issuer.watched = lambda *_: None  # B's watch events are still on their way
                try:
                    await kv.create(a.issuer.kv_key("dev-race"), json.dumps({"p": "dev-race", "t": now, "v": False}).encode())
                    r = await cb.post("/api/enrol", json={"pseudonyms": ["dev-ok", "dev-race"]})
                finally:
                    b.issuer.watched = hold
                assert r.status_code == 409, r.text
                assert "key" not in r.text and "first come" in r.text, r.text
                assert b.issuer.enrolled.get("dev-race") == now  # the winner's entry, read at once
                assert "dev-ok" not in b.issuer.enrolled  # all or nothing: rolled back here ...
                with pytest.raises(nats.js.errors.KeyNotFoundError):
                    await kv.get(a.issuer.kv_key("dev-ok"))  # ... and in the bucket
                await _until(lambda: "dev-ok" not in a.issuer.enrolled, 5, "A dropping the rolled-back enrolment")
                r = await cb.post("/api/enrol", json={"pseudonyms": ["dev-ok"]})  # the device asks again: served
                assert r.status_code == 200 and [c["device"] for c in r.json()["credentials"]] == ["dev-ok"], r.text
                assert b.issuer.counts["lost_race"] == 1

                # --- two workers asked for one pseudonym at the same moment: one key
                statuses, winners = [], 0
                for i in range(20):
                    rs = await asyncio.gather(ca.post("/api/enrol", json={"pseudonyms": [f"dev-both-{i}"]}),
                                              cb.post("/api/enrol", json={"pseudonyms": [f"dev-both-{i}"]}))
                    statuses += [x.status_code for x in rs]
                    got = [x for x in rs if x.status_code == 200 and x.json()["credentials"]]
                    assert len(got) == 1, [x.text for x in rs]
                    winners += 1
                assert set(statuses) <= {200, 409}
                print(f"20 pseudonyms asked through A and B at once: one key each; answers {sorted(statuses)}")

            # --- a worker with another master refuses to start
            d = _worker(nats_url, "d", other, REGION_A)
            workers.append(d)
            with pytest.raises(RuntimeError, match="same credentials file"):
                await d.start()
            await d.crash()

            # --- a worker that starts later imports the enrolments
            c = _worker(nats_url, "c", copies["c"], REGION_A)
            workers.append(c)
            await c.start()
            assert {"dev-a1", "dev-a2", "dev-race", "dev-ok"} <= c.issuer.enrolled.keys()
            assert c.issuer.is_new("dev-a1", time.time(), new_s) and c.issuer.kid == a.issuer.kid

            # --- retention: a purge keeping 3 s (what `yujing serve --retention-days` sets)
            await asyncio.sleep(3.2)  # every enrolment so far is older than the period
            async with _client(a) as ca:
                r = await ca.post("/api/enrol", json={"pseudonyms": ["dev-young"]})
                assert r.status_code == 200 and r.json()["credentials"], r.text
            await _until(lambda: all("dev-young" in w.issuer.enrolled for w in (a, b, c)), 5, "dev-young everywhere")
            period = 3.0
            for w in (a, b, c):
                purge_memory(w.main_service, time.time() - period)
            old = ["dev-a1", "dev-a2", "dev-race", "dev-ok"] + [f"dev-both-{i}" for i in range(20)]
            for w in (a, b, c):
                assert not set(old) & w.issuer.enrolled.keys(), w.cfg.worker_id
                assert "dev-young" in w.issuer.enrolled

            async def bucket_has(p):
                try:
                    await kv.get(a.issuer.kv_key(p))
                    return True
                except nats.js.errors.KeyNotFoundError:
                    return False

            t0 = time.monotonic()
            while any([await bucket_has(p) for p in old]):
                assert time.monotonic() - t0 < 10, "old entries still in the bucket 10 s after the purge"
                await asyncio.sleep(0.1)
            info = await js.stream_info(f"KV_{KV_ENROL}")
            assert abs(info.config.max_age - period) < 0.1, info.config.max_age
            assert await bucket_has("dev-young")
            # dev-young's own period ends: the bucket drops it, the next purge the workers
            t0 = time.monotonic()
            while await bucket_has("dev-young"):
                assert time.monotonic() - t0 < 10, "dev-young still in the bucket"
                await asyncio.sleep(0.1)
            gone_s = time.time() - a.issuer.enrolled["dev-young"]
            for w in (a, b, c):
                purge_memory(w.main_service, time.time() - period)
                assert not w.issuer.enrolled, (w.cfg.worker_id, w.issuer.enrolled)
            info = await js.stream_info(f"KV_{KV_ENROL}")
            print(f"retention {period:.0f} s: old entries gone from the bucket at once, dev-young {gone_s:.1f} s after its "
                  f"enrolment; bucket messages now {info.state.messages}; every worker's enrolled set empty")
            # the deployment record names the master's key id only (no pseudonym is kept without an end)
            ckv = await js.key_value(KV_CREDS)
            rec = json.loads((await ckv.get("deployment")).value)
            assert set(rec) == {"kid", "grace_until_s"} and rec["kid"] == a.issuer.kid.hex()
            for w in (a, b, c):
                assert w.errors == 0, w.cfg.worker_id
        finally:
            for w in workers:
                await w.stop()
            await nc.close()

    _run(go, 120)


def test_a_shared_issuer_refuses_a_flush_on_its_own_loop(nats_url, tmp_path):
    """The API calls flush_log in a worker thread; on the event loop it would wait for
    itself: refused (and nothing of the request is enrolled)."""
    creds = tmp_path / "w.credentials"

    async def go():
        w = _worker(nats_url, "w", creds, REGION_A)
        try:
            await w.start()
            # a fresh credentials file: the first worker gives the deployment its grace period
            new_s = w.settings.associate.new_device_s
            assert abs(w.issuer.grace_until_s - (time.time() + new_s)) < 30
            rec = json.loads((await (await w.js.key_value(KV_CREDS)).get("deployment")).value)
            assert rec["grace_until_s"] == w.issuer.grace_until_s
            assert w.main_service.issuer.grace_until_s == rec["grace_until_s"]  # not the shard's own (engine-clock) one
            w.issuer.enrol("dev-x", time.time())
            with pytest.raises(RuntimeError, match="worker thread"):
                w.issuer.flush_log()
            assert "dev-x" not in w.issuer.enrolled
            w.issuer.enrol("dev-x", time.time())  # reserved no more: it can be asked again
            await asyncio.to_thread(w.issuer.flush_log)
            assert "dev-x" in w.issuer.enrolled and w.issuer.counts["shared"] == 1
            # the worker stopped: enrolment is refused rather than made here alone
            await w.stop()
            with pytest.raises(ValueError, match="stopping"):
                w.issuer.enrol("dev-y", time.time())
        finally:
            await w.crash()

    _run(go, 60)


def test_token_accounts_go_by_the_server_clock(nats_url, tmp_path):
    """A worker's API is given a shard's Service, whose clock is the engine clock: 0 before
    the shard's first step (held there here: simulation arrival times, no message yet).
    An account opened then is stamped with the wall clock, so once the engine clock has
    reached UNIX time it is seconds old, not 1.7e9 s: it gets a 'new' token and is refused
    an 'est' one (devices younger than new_device_s must not count toward announcing). A
    token is checked at enrolment against the server's date, also while the engine clock
    of the worker that checks it is still 0."""
    master = tmp_path / "deployment.credentials"
    Issuer.load(master)
    copies = {}
    for w in ("a", "b"):
        copies[w] = tmp_path / f"{w}.credentials"
        shutil.copy(master, copies[w])

    async def go():
        nc = await ynats.connect([nats_url], "test")
        js = nc.jetstream(timeout=5)
        a = _worker(nats_url, "a", copies["a"], REGION_A, arrival="header")
        b = _worker(nats_url, "b", copies["b"], REGION_B, arrival="header")
        try:
            for w in (a, b):
                await w.start()
            await _until(lambda: all(s.live for w in (a, b) for s in w.shards), 10, "workers live")
            sa, sb = a.shards[0], b.shards[0]
            assert a.main_service is sa.svc and sa.clock() == 0.0 and sb.clock() == 0.0  # no engine step yet
            new_s = a.settings.associate.new_device_s
            async with _client(a) as ca, _client(b) as cb:
                r = await ca.post("/api/account")
                assert r.status_code == 200, r.text
                acct = r.json()
                t_open = time.time()
                assert sa.clock() == 0.0
                opened = a.issuer.tokens.accounts[acct["account"]]
                assert abs(opened - t_open) < 5, opened  # the server's clock, not the engine's 0

                # a device message moves A's engine clock to wall time
                cred = a.issuer.credential("dev-clock")
                topic, payload = Signer(creds={"dev-clock": cred}).wire("trig", _trigger("dev-clock", time.time(), CELL_A))
                await js.publish(topic.replace("/", "."), payload, headers={ynats.ARRIVAL_HEADER: repr(time.time())})
                await _until(lambda: sa.clock() > t_open - 60, 10, "A's engine clock reaching wall time")

                keys = {k: tokens.PublicKey.from_json(v) for k, v in (await ca.get("/api/token/keys")).json().items()}
                day = tokens.utc_day(time.time() + 86_400.0)  # tomorrow's pseudonym, asked for today

                async def ask(which: str):
                    bl = tokens.blind(keys[which], tokens.message(day, "ph-young"))
                    proof = tokens.request_proof(bytes.fromhex(acct["key"]), day, bl.blinded)
                    r = await ca.post("/api/token", json={"account": acct["account"], "day": day, "key": which,
                                                          "blinded": bl.blinded.hex(), "proof": proof})
                    return r, bl

                r, _ = await ask("est")  # stamped 0, the account looked 1.7e9 s old: 'est' was signed
                assert r.status_code == 422 and "ask for 'new'" in r.json()["error"]["message"], r.text
                r, bl = await ask("new")
                assert r.status_code == 200 and r.json()["key"] == "new", r.text
                sig = tokens.finalize(keys["new"], bl, bytes.fromhex(r.json()["blind_sig"]))

                # enrolled through B, whose engine clock is still 0: the token is for tomorrow
                # by the server's date (by the engine's, 1970-01-02 would be)
                assert sb.clock() == 0.0
                tok = {"key": "new", "day": day, "prefix": bl.input[:32].hex(), "sig": sig.hex()}
                r = await cb.post("/api/enrol", json={"pseudonyms": ["ph-young"], "tokens": {"ph-young": tok}})
                assert r.status_code == 200 and [c["device"] for c in r.json()["credentials"]] == ["ph-young"], r.text
                assert "ph-young" not in b.issuer.vouched and b.issuer.is_new("ph-young", time.time(), new_s)
            print(f"\naccount opened with A's engine clock at 0: stamped {opened - t_open:+.3f} s from the wall clock; "
                  f"'est' refused, 'new' signed once the engine clock reached {sa.clock():.0f}; "
                  "the token enrolled through B (engine clock 0) as new")
            for w in (a, b):
                assert w.errors == 0, w.cfg.worker_id
        finally:
            for w in (a, b):
                await w.stop()
            await nc.close()

    _run(go, 60)


def test_data_requests_and_audit_go_by_the_server_clock(nats_url, tmp_path):
    """A device's export request carries a proof made at its own (wall) time, good within
    300 s of the server's clock; the audit row written before anything is read dates it.
    Through a worker whose engine clock is still 0 (simulation arrival times, no message
    yet) the request is taken and its audit row, and an operator's audited read, carry the
    wall clock (by the engine clock every request was refused: 'within 300 s of 0')."""
    creds = tmp_path / "a.credentials"
    Issuer.load(creds)
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}")

    async def go():
        a = _worker(nats_url, "a", creds, REGION_A, arrival="header")
        try:
            await a.start()
            await _until(lambda: all(s.live for s in a.shards), 10, "worker live")
            sa = a.shards[0]
            assert sa.clock() == 0.0  # no engine step yet
            op = await asyncio.to_thread(create_key, store, "ops", "operator", "test")
            app = create_app(a.main_service, store=store)  # as `yujing serve --bus` does
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as c:
                r = await c.post("/api/enrol", json={"pseudonyms": ["ph-data"]})
                assert r.status_code == 200, r.text
                got = r.json()
                cred = Credential("ph-data", bytes.fromhex(got["credentials"][0]["key"]), bytes.fromhex(got["kid"]))

                t = float(int(time.time()))
                r = await c.post("/api/device/data",
                                 json={"device": "ph-data", "action": "export", "t_s": t,
                                       "proof": data_proof(cred, "export", t)})
                assert r.status_code == 200, r.text  # refused by the engine clock: 'within 300 s of ... (0)'
                assert r.json()["device"] == "ph-data" and "data" in r.json()
                t_export = time.time()
                r = await c.get("/api/ops/audit", params={"purpose": "ticket-7", "limit": 2},
                                headers={"Authorization": f"Bearer {op}"})
                assert r.status_code == 200, r.text
                t_read = time.time()
            assert sa.clock() == 0.0  # still: the wall clock, not an engine step, dated them
            read, export = r.json()["rows"]
            assert (read["action"], export["action"]) == ("read_audit_log", "device_export"), (read, export)
            assert export["actor"].startswith("device:dev#")  # the pseudonym as a keyed tag
            assert abs(export["at_s"] - t_export) < 5, export  # the server's clock, not the engine's 0
            assert abs(read["at_s"] - t_read) < 5, read
            # found by its pseudonym while its tag key lives: the key of this hour (a row
            # dated 0 got 1970's first hour's key, which the first retention purge deletes)
            assert [x["seq"] for x in await asyncio.to_thread(store.audit_rows_about, "ph-data")] == [export["seq"]]
            print(f"\nexport through a worker with engine clock 0: taken; audit rows at {export['at_s'] - t_export:+.3f} s "
                  f"(export) and {read['at_s'] - t_read:+.3f} s (operator read) from the wall clock")
            assert a.errors == 0
        finally:
            await a.stop()

    try:
        _run(go, 60)
    finally:
        store.close()


def test_enrolments_per_address_are_counted_across_workers(nats_url, tmp_path):
    """``--enrol-per-address`` (3 here) holds for the deployment, not per worker: an
    address that enrolled 2 pseudonyms for itself through worker A gets 1 more through
    worker B, and A hears B's count back. The bucket YJ_QUOTA holds counts under a keyed
    hash of the address, never the address."""
    from yujing.api.auth import ApiLimits
    from yujing.scaleout import KV_QUOTA

    master = tmp_path / "deployment.credentials"
    Issuer.load(master)
    for w in ("a", "b"):
        shutil.copy(master, tmp_path / f"{w}.credentials")

    async def go():
        nc = await ynats.connect([nats_url], "test")
        js = nc.jetstream(timeout=5)
        a = _worker(nats_url, "a", tmp_path / "a.credentials", REGION_A)
        b = _worker(nats_url, "b", tmp_path / "b.credentials", REGION_B)
        try:
            for w in (a, b):
                await w.start()
            limits = ApiLimits(enrol_per_address=3)
            apps = {w: create_app(w.main_service, limits=limits, share_quota=w.share_quota) for w in (a, b)}

            def client(w):
                return httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[w], client=("198.51.100.7", 4000)),
                                         base_url="http://w")

            async with client(a) as ca, client(b) as cb:
                r = (await ca.post("/api/enrol", json={"pseudonyms": ["q-a1", "q-a2"]})).json()
                assert len(r["credentials"]) == 2 and r["refused"] == []
                quota_b = apps[b].state.enrol_quota
                await _until(lambda: quota_b.left("198.51.100.7", time.time()) == 1, 5, "B hears A's count")
                r = (await cb.post("/api/enrol", json={"pseudonyms": ["q-b1", "q-b2"]})).json()
                assert [c["device"] for c in r["credentials"]] == ["q-b1"]
                assert [x["device"] for x in r["refused"]] == ["q-b2"] and "--enrol-per-address" in r["refused"][0]["reason"]
                quota_a = apps[a].state.enrol_quota
                await _until(lambda: quota_a.left("198.51.100.7", time.time()) == 0, 5, "A hears B's count")
                r = (await ca.post("/api/enrol", json={"pseudonyms": ["q-a3"]})).json()
                assert r["credentials"] == [] and r["refused"][0]["device"] == "q-a3"
            kv = await js.key_value(KV_QUOTA)
            keys = await kv.keys()
            assert len(keys) == 2, keys  # one count per worker
            for k in keys:  # <what>.<keyed hash of the address>.<UTC day>.<worker id, hex>: no address
                what, h, day, worker = k.split(".")
                assert what == "pseudonym" and len(h) == 32 and int(h, 16) >= 0 and int(day) == int(time.time() // 86_400)
                assert bytes.fromhex(worker).decode() in ("a", "b")
            for w in (a, b):
                assert w.errors == 0, w.cfg.worker_id
        finally:
            for w in (a, b):
                await w.stop()
            await nc.close()

    _run(go, 120)
