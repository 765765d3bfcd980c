"""Device security at the service's door: signatures, replay window, rate limits,
credentials across a restart, and a device's data-rights requests over the API."""

from __future__ import annotations

import asyncio
import math

import h3
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yujing import protocol, security
from yujing.security import Issuer, Signer, data_proof
from yujing.service import ManualClock, Service, ServiceConfig

CELL = h3.latlng_to_cell(29.6, 102.1, 7)


def _hb(dev="p1", sent=1000.0):
    return protocol.HeartbeatMsg(device=dev, cell=CELL, sent_s=sent)


def _trig(dev="p1", onset=1000.0, update=0):
    return protocol.TriggerMsg(device=dev, cell=CELL, sent_s=onset + 1.6, onset_s=onset, window_s=1.5, pga_gal=5.0,
                               pgv_cm_s=0.1, pd_cm=0.01, update=update)


@pytest.fixture
def svc():
    return Service(clock=ManualClock(1000.0), issuer=Issuer(bytes(range(32))))


def test_signed_messages_pass_and_every_forgery_is_refused_by_reason(svc):
    sign = Signer(svc.issuer)
    topic, good = sign.wire("hb", _hb())
    assert svc.receive(topic, good, 1000.0)
    # the NATS spelling of the same topic verifies too (devices reach NATS over MQTT)
    t2, p2 = sign.wire("hb", _hb())
    assert svc.receive(t2.replace("/", "."), p2, 1000.1)
    # a bit flipped anywhere in the body: the tag fails (or the body no longer decodes)
    _, p3 = sign.wire("hb", _hb(sent=1001.0))
    bad = bytearray(p3)
    bad[len(bad) - 30] ^= 0x01
    assert not svc.receive(topic, bytes(bad), 1001.0)
    # moved to another kind's topic: the topic is under the tag
    _, p4 = sign.wire("hello", protocol.HelloMsg(device="p1", cell=CELL, sent_s=1001.0))
    assert not svc.receive(protocol.topic_for("consent", CELL), p4, 1001.0)
    # signed by another server's issuer; unsigned; someone else's pseudonym with my key
    _, p5 = Signer(Issuer(bytes(32))).wire("hb", _hb())
    assert not svc.receive(topic, p5, 1001.0)
    assert not svc.receive(topic, protocol.encode(_hb()), 1001.0)
    mine = svc.issuer.credential("p1")
    stolen = security.sign(security.Credential("p2", mine.key, mine.kid), topic, msgspec.structs.replace(_hb("p2"), seq=1))
    assert not svc.receive(topic, stolen, 1001.0)
    by = svc.rejects.by_reason()
    assert by.pop("bad_signature") == 2 and by.pop("unknown_credential") == 1 and by.pop("unsigned") == 1
    assert sum(by.values()) == 1, by  # the flipped bit: bad_signature, or a field that no longer decodes


def test_replay_window_takes_reordered_messages_and_refuses_repeats_and_old_ones(svc):
    sign = Signer(svc.issuer)
    msgs = [sign.wire("hb", _hb(sent=1000.0 + i)) for i in range(400)]
    assert svc.receive(*msgs[10], 1000.0)
    assert all(svc.receive(*m, 1000.0) for m in msgs[:10])  # arrived late, within the window
    assert not svc.receive(*msgs[5], 1000.0)  # again
    assert svc.receive(*msgs[399], 1000.0)
    assert not svc.receive(*msgs[100], 1000.0)  # 299 behind: older than the window (256)
    assert svc.receive(*msgs[300], 1000.0)  # 99 behind: in the window, not seen
    assert svc.rejects.by_reason() == {"replayed": 1, "seq_too_old": 1}


def test_a_device_sending_hundreds_of_triggers_a_minute_is_throttled(svc):
    sign = Signer(svc.issuer)
    sent = ok = 0
    # one onset and then 10 updates a second for 60 s: 601 trigger messages in a minute
    for i in range(601):
        t = 1000.0 + i * 0.1
        ok += svc.receive(*sign.wire("trig", _trig(onset=1000.0, update=i)), t)
        sent += 1
    thr = svc.rejects.by_reason()["rate_limited_device"]
    print(f"\n601 triggers in 60 s from one credential: {ok} passed, {thr} throttled")
    assert ok + thr == sent and ok <= security.TRIGGER_BURST + 60 * security.TRIGGER_RATE_PER_S + 1
    # a burst of new onsets from one credential: ONSET_BURST pass, and the updates of a
    # refused onset are refused with it
    svc2 = Service(clock=ManualClock(1000.0), issuer=svc.issuer)
    sign2 = Signer(svc.issuer)
    got = [svc2.receive(*sign2.wire("trig", _trig("q1", onset=2000.0 + k)), 2000.0 + k) for k in range(20)]
    assert sum(got) == security.ONSET_BURST
    assert not svc2.receive(*sign2.wire("trig", _trig("q1", onset=2019.0, update=1)), 2019.5)


def test_onsets_per_cell_are_capped_and_counted(svc):
    """1,000 devices that enrolled themselves a minute ago (new) trigger in one cell at once:
    the cell's onset limit holds them; 1,000 established ones (enrolled a day ago) in
    another cell pass (a strong quake under a city), each within its own limits."""
    sign = Signer(svc.issuer)
    for i in range(1000):
        svc.issuer.enrol(f"d{i}", 1000.0 - 60.0)
        svc.issuer.enrol(f"e{i}", 1000.0 - 86_400.0)
    got = [svc.receive(*sign.wire("trig", _trig(f"d{i}", onset=1000.0)), 1000.0) for i in range(1000)]
    assert sum(got) == security.CELL_ONSET_BURST
    assert svc.rejects.by_reason() == {"rate_limited_cell": 1000 - security.CELL_ONSET_BURST}
    other = h3.latlng_to_cell(29.7, 102.2, 7)
    est = [svc.receive(*sign.wire("trig", msgspec.structs.replace(_trig(f"e{i}", onset=1000.0), cell=other)), 1000.0)
           for i in range(1000)]
    assert all(est) and svc.rejects.by_reason() == {"rate_limited_cell": 1000 - security.CELL_ONSET_BURST}


def test_unsigned_messages_only_on_a_development_server():
    cfg = ServiceConfig(allow_unsigned=True)
    svc = Service(clock=ManualClock(1000.0), config=cfg, issuer=Issuer(bytes(range(32))))
    assert svc.receive(protocol.topic_for("hb", CELL), protocol.encode(_hb()), 1000.0)
    # a signed message is still checked
    _, p = Signer(Issuer(bytes(32))).wire("hb", _hb())
    assert not svc.receive(protocol.topic_for("hb", CELL), p, 1000.0)
    assert ServiceConfig().allow_unsigned is False  # what `yujing serve` gets


def test_credentials_survive_a_restart_through_the_credentials_file(tmp_path):
    path = tmp_path / "creds"
    cfg = ServiceConfig(credentials_file=str(path))

    async def life(msgs_in, enrol=()):
        svc = Service(clock=ManualClock(1000.0), config=cfg)
        await svc.start()
        for p in enrol:
            svc.issuer.enrol(p, 1000.0)
        ok = [svc.receive(t, p, 1000.0) for t, p in msgs_in(svc)]
        await svc.stop()
        return svc, ok

    first, _ = asyncio.run(life(lambda s: [], enrol=["today1"]))
    cred = first.issuer.credential("dev1")
    msg = security.sign(cred, protocol.topic_for("hb", CELL), msgspec.structs.replace(_hb("dev1"), seq=1))
    second, ok = asyncio.run(life(lambda s: [(protocol.topic_for("hb", CELL), msg)]))
    assert ok == [True] and second.issuer.kid == first.issuer.kid
    with pytest.raises(ValueError, match="enrolled already"):
        second.issuer.enrol("today1", 1001.0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sig=st.binary(max_size=40), seq=st.integers(-(2**63), 2**63 - 1), cut=st.integers(0, 40), flip=st.integers(0, 10_000))
def test_fuzz_signature_fields_never_crash_the_door(sig, seq, cut, flip):
    svc = Service(clock=ManualClock(1000.0), issuer=Issuer(bytes(range(32))))
    topic = protocol.topic_for("trig", CELL)
    good = Signer(svc.issuer).payload(topic, _trig())
    raw = protocol.encode(msgspec.structs.replace(_trig(), sig=sig, seq=seq))
    b = bytearray(good)
    b[flip % len(b)] ^= 0xFF
    for payload in (raw, good[: len(good) - cut], bytes(b)):
        ok = svc.receive(topic, payload, 1000.0)
        assert isinstance(ok, bool)
    assert "decode_error" not in svc.rejects.by_reason()


def test_a_device_exports_and_deletes_its_data_by_proving_its_key(tmp_path):
    from yujing.api.app import create_app
    from yujing.store import open_store

    store = open_store("sqlite:///" + str(tmp_path / "s.db"))
    clock = ManualClock(1000.0)
    svc = Service(clock=clock, store=store, issuer=Issuer(bytes(range(32))))
    app = create_app(svc)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.post("/api/enrol", json={"pseudonyms": ["day1", "day1b"]})
            assert r.status_code == 200, r.text
            creds = {x["device"]: security.Credential(x["device"], bytes.fromhex(x["key"]), bytes.fromhex(r.json()["kid"]))
                     for x in r.json()["credentials"]}
            again = await c.post("/api/enrol", json={"pseudonyms": ["day1"]})
            assert again.json()["credentials"] == [] and "enrolled already" in again.json()["refused"][0]["reason"]
            cred = creds["day1"]
            sign = Signer(creds=creds)
            hello = sign.wire("hello", protocol.HelloMsg(device="day1", cell=CELL, sent_s=1000.0))
            assert svc.receive(*hello, 1000.0)
            svc.process_queue()
            await svc._flush_registry_async()

            def req(action, proof_cred=cred, t=1000.0):
                return {"device": "day1", "action": action, "t_s": t, "proof": data_proof(proof_cred, action, t)}

            # someone without the key (another device's credential, a stale time) is refused
            assert (await c.post("/api/device/data", json=req("export", creds["day1b"]))).status_code == 403
            assert (await c.post("/api/device/data", json=req("export", t=100.0))).status_code == 403
            r = await c.post("/api/device/data", json=req("export"))
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            assert data["registry"]["cell"] == CELL and data["stored"]["cell"] == CELL
            # the same proof twice: refused (a captured request cannot be replayed)
            assert (await c.post("/api/device/data", json=req("export"))).status_code == 403
            r = await c.post("/api/device/data", json=req("delete", t=1001.0))
            assert r.status_code == 200, r.text
            assert r.json()["deleted"] == {"registry": 1, "recent_triggers": 0, "stored": 1}
            assert store.device("day1") is None and "day1" not in svc.registry.devs
            # its old messages stay refused: the replay window is kept
            assert not svc.receive(*hello, 1002.0) and svc.rejects.by_reason() == {"replayed": 1}

    asyncio.run(go())
    log = store.audit_log(10)
    acts = [(e["actor"], e["action"], e["target"]) for e in log]
    # the store keeps the pseudonym as a keyed tag (docs/privacy.md), found again from it
    assert "day1" not in repr(acts)
    about = [(e["actor"], e["action"], e["target"]) for e in store.audit_rows_about("day1")]
    tag = about[0][2]
    assert about == [(f"device:{tag}", "device_export", tag), (f"device:{tag}", "device_delete", tag)]
    store.close()


def test_self_enrolled_devices_are_new_for_a_while_and_vouched_ones_never(tmp_path):
    iss = Issuer(bytes(range(32)))
    iss.enrol("self", 1000.0)
    iss.enrol("gw", 1000.0, vouched=True)
    new_s = 6 * 3600.0
    assert iss.is_new("self", 1000.0 + new_s - 1, new_s) and not iss.is_new("self", 1000.0 + new_s, new_s)
    assert not iss.is_new("gw", 1001.0, new_s)
    assert not iss.is_new("local", 1001.0, new_s)  # a credential of the server's own processes
    path = tmp_path / "creds"
    iss.save(path)
    back = Issuer.load(path)
    assert back.vouched == {"gw"} and back.is_new("self", 1001.0, new_s)
    assert iss.forget_before(2000.0) == 2 and not iss.vouched


def test_daily_tokens_vouch_for_a_pseudonym_without_linking_it_to_the_account():
    """The RFC 9474 flow through a real server: an account older than new_device_s gets an
    'est' token for tomorrow's pseudonym, blindly signed; enrolling with it vouches for the
    pseudonym (established at midnight); a young account's token is 'new'; one token per
    account per day; a token shown for another pseudonym or day is refused."""
    import httpx

    from yujing import tokens
    from yujing.serve import ServeOptions, Server

    now = [1_700_000_000.0]

    async def go():
        srv = Server(ServeOptions(port=0, mqtt_port=0, store="sqlite://:memory:", replay=False), clock=lambda: now[0])
        await srv.start()
        try:
            async with httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
                old = (await api.post("/api/account")).json()
                now[0] += 7 * 3600.0  # the account is 7 h old: established
                young = (await api.post("/api/account")).json()
                keys = {k: tokens.PublicKey.from_json(v) for k, v in (await api.get("/api/token/keys")).json().items()}
                day = tokens.utc_day(now[0] + 86_400.0)  # tomorrow's pseudonym, asked for today

                async def get_token(acct, pseudonym, which="est"):
                    b = tokens.blind(keys[which], tokens.message(day, pseudonym))
                    proof = tokens.request_proof(bytes.fromhex(acct["key"]), day, b.blinded)
                    r = await api.post("/api/token", json={"account": acct["account"], "day": day, "key": which,
                                                           "blinded": b.blinded.hex(), "proof": proof})
                    return r, b

                r, b = await get_token(old, "ph-tomorrow")
                assert r.status_code == 200 and r.json()["key"] == "est", r.text
                sig = tokens.finalize(keys["est"], b, bytes.fromhex(r.json()["blind_sig"]))
                # what the server saw (the blinded value) is not what it will be shown
                assert b.blinded != sig and b"ph-tomorrow" not in b.blinded
                again, _ = await get_token(old, "ph-second")
                assert again.status_code == 422 and "one per day" in again.json()["error"]["message"]
                ry, _ = await get_token(young, "ph-young")  # too young for an established token
                assert ry.status_code == 422 and "ask for 'new'" in ry.json()["error"]["message"]
                ry, by = await get_token(young, "ph-young", "new")
                assert ry.status_code == 200 and ry.json()["key"] == "new", ry.text
                tok = {"key": "est", "day": day, "prefix": b.input[:32].hex(), "sig": sig.hex()}
                # shown for another pseudonym, the token is refused; for its own, it vouches
                r = await api.post("/api/enrol", json={"pseudonyms": ["ph-thief"], "tokens": {"ph-thief": tok}})
                assert r.json()["refused"] and not r.json()["credentials"]
                r = await api.post("/api/enrol", json={"pseudonyms": ["ph-tomorrow"], "tokens": {"ph-tomorrow": tok}})
                assert r.json()["credentials"] and not r.json()["refused"], r.text
                ysig = tokens.finalize(keys["new"], by, bytes.fromhex(ry.json()["blind_sig"]))
                ytok = {"key": "new", "day": day, "prefix": by.input[:32].hex(), "sig": ysig.hex()}
                r = await api.post("/api/enrol", json={"pseudonyms": ["ph-young"], "tokens": {"ph-young": ytok}})
                assert r.json()["credentials"]
            iss = srv.service.issuer
            assert "ph-tomorrow" in iss.vouched and "ph-young" not in iss.vouched
            # at midnight the vouched pseudonym is established, the young account's is new
            t_mid = now[0] + 3600.0
            assert not iss.is_new("ph-tomorrow", t_mid, 6 * 3600.0) and iss.is_new("ph-young", t_mid, 6 * 3600.0)
            # the server's token state names accounts and days, never a pseudonym
            assert "ph-tomorrow" not in repr((iss.tokens.accounts, iss.tokens.issued))
        finally:
            await srv.stop()

    asyncio.run(go())


def test_a_phone_behind_a_busy_shared_address_enrols_with_its_accounts_token():
    """A carrier NAT's address has spent its day of self-enrolments
    (``--enrol-per-address``, 2 here): a third phone is refused, but one whose account is
    7 h old enrols tomorrow's pseudonym with a daily token built by the device side
    (:class:`yujing.device.signing.TokenAsk`), which the count does not charge, and it is
    vouched for."""
    from yujing.api.auth import ApiLimits
    from yujing.device.signing import DeviceSigner, TokenAsk, enrol_request
    from yujing.serve import ServeOptions, Server
    from yujing.tokens import utc_day

    now = [1_700_000_000.0]

    async def go():
        srv = Server(ServeOptions(port=0, mqtt_port=0, store="sqlite://:memory:", replay=False,
                                  limits=ApiLimits(enrol_per_address=2)), clock=lambda: now[0])
        await srv.start()
        try:
            async with httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
                acct = (await api.post("/api/account")).json()
                now[0] += 7 * 3600.0  # the account is 7 h old: its tokens are established
                hdr = {"Content-Type": "application/json"}
                r = (await api.post("/api/enrol", content=enrol_request(["nat-a", "nat-b", "nat-c"]), headers=hdr)).json()
                assert [c["device"] for c in r["credentials"]] == ["nat-a", "nat-b"]
                assert [x["device"] for x in r["refused"]] == ["nat-c"] and "token" in r["refused"][0]["reason"]
                keys = (await api.get("/api/token/keys")).json()
                day = utc_day(now[0] + 86_400.0)
                ask = TokenAsk(keys, "est", acct["account"], bytes.fromhex(acct["key"]), day, "nat-phone")
                rt = await api.post("/api/token", content=ask.request(), headers=hdr)
                assert rt.status_code == 200, rt.text
                tok = ask.token(rt.json())
                body = enrol_request(["nat-phone"], {"nat-phone": tok})
                signer = DeviceSigner()
                refused = signer.add_enrolment((await api.post("/api/enrol", content=body, headers=hdr)).json())
                assert refused == [] and "nat-phone" in signer.credentials
            iss = srv.service.issuer
            assert "nat-phone" in iss.vouched and "nat-c" not in iss.enrolled
        finally:
            await srv.stop()

    asyncio.run(go())
    # an answer signed with the other key, or one that does not verify, is refused on the device
    from yujing import tokens

    k = tokens.SigningKey()
    ask = TokenAsk({"est": k.pub}, "est", "acct", b"k" * 32, "2026-12-07", "p")
    with pytest.raises(ValueError, match="'new' key"):
        ask.token({"key": "new", "blind_sig": "00"})
    with pytest.raises(ValueError, match="does not verify"):
        ask.token({"key": "est", "blind_sig": "01" * k.pub.size})


def test_blind_signature_matches_standard_rsa_pss_and_refuses_tampering():
    """The unblinded signature is an ordinary RSASSA-PSS (SHA-384) signature that
    ``cryptography`` verifies: the PSS encoding built here is right; a flipped bit fails."""
    from yujing import tokens

    k = tokens.SigningKey()
    b = tokens.blind(k.pub, tokens.message("2026-12-06", "p1"))
    sig = tokens.finalize(k.pub, b, k.blind_sign(b.blinded))
    assert tokens.verify(k.pub, b.input, sig)
    bad = bytearray(sig)
    bad[10] ^= 1
    assert not tokens.verify(k.pub, b.input, bytes(bad))
    assert not tokens.verify(k.pub, b.input[:-1] + b"2", sig)
    with pytest.raises(ValueError):
        tokens.finalize(k.pub, b, tokens.SigningKey().blind_sign(b.blinded[: k.pub.size]))


def test_a_signed_clock_minutes_ahead_is_believed_and_an_unsigned_one_is_not():
    """Only its own device can sign a message, so a signed clock 5 min fast is the device's
    clock and is kept as its offset; an unsigned message that far ahead (a development
    server) could be anyone's forgery and does not move the estimate."""
    svc = Service(clock=ManualClock(1000.0), issuer=Issuer(bytes(range(32))), config=ServiceConfig(allow_unsigned=True))
    assert svc.receive(*Signer(svc.issuer).wire("hb", _hb("s1", sent=1300.0)), 1000.2)
    assert svc.receive(protocol.topic_for("hb", CELL), protocol.encode(_hb("u1", sent=1300.0)), 1000.2)
    svc.process_queue()
    assert svc.registry.devs["s1"].off_min_s == pytest.approx(-299.8)
    assert svc.registry.devs["u1"].off_min_s == math.inf


def test_a_flood_of_enrolments_cannot_push_young_fakes_out_of_the_table():
    """A forgotten enrolment must not count as established: when a flood of enrolments
    forces young ones out of a full table, a pseudonym the table no longer knows counts as
    new for new_device_s (refusing instead would deny every phone its enrolment at
    midnight)."""
    new_s = 6 * 3600.0
    iss = Issuer(bytes(range(32)), max_enrolled=100)
    iss.enrol("fake0", 1000.0)
    for i in range(99):
        iss.enrol(f"junk{i}", 1001.0)
    iss.enrol("junk-more", 1002.0)  # room made: fake0 is gone
    assert "fake0" not in iss.enrolled and "junk-more" in iss.enrolled
    assert iss.is_new("fake0", 1100.0, new_s)  # forgotten, still new
    assert not iss.is_new("fake0", 1002.0 + new_s, new_s)
    # an unknown pseudonym of a table never flooded is the server's own or an old one
    assert not Issuer(bytes(range(32))).is_new("fake0", 1100.0, new_s)


def test_a_fresh_master_gives_its_first_hours_enrolments_grace():
    """A server that starts on a new master (first start, or no credentials file) has every
    phone enrol afresh: without grace it could announce nothing for new_device_s."""
    clock = ManualClock(10_000.0)
    iss = Issuer()
    svc = Service(clock=clock, issuer=iss)
    assert svc.issuer.grace_until_s == pytest.approx(10_000.0 + 6 * 3600.0)
    iss.enrol("early", 10_100.0)
    iss.enrol("later", 10_000.0 + 7 * 3600.0)
    assert not iss.is_new("early", 10_200.0, 6 * 3600.0)
    assert iss.is_new("later", 10_000.0 + 7 * 3600.0 + 60.0, 6 * 3600.0)
    # a given master (a loaded or an operator's) gets no grace
    assert Service(clock=clock, issuer=Issuer(bytes(range(32)))).issuer.grace_until_s == -math.inf


def test_enrolments_survive_a_crash_through_the_credentials_log(tmp_path):
    """Enrolments are appended to <credentials file>.log before the keys leave the server:
    a server killed before its clean stop forgets none (a forgotten one would count as
    established and could be enrolled again by whoever knows the pseudonym)."""
    path = tmp_path / "creds"
    first = Issuer.load(path)
    Service(clock=ManualClock(50_000.0), issuer=first)  # a fresh master: grace, logged
    first.enrol("ph1", 50_010.0)
    first.enrol("gw1", 50_020.0, vouched=True)
    acct, _ = first.tokens.open_account(50_030.0)
    first.flush_log()
    # killed here: no save. The next start finds them all
    again = Issuer.load(path)
    assert again.enrolled == {"ph1": 50_010.0, "gw1": 50_020.0} and again.vouched == {"gw1"}
    assert again.grace_until_s == first.grace_until_s and acct in again.tokens.accounts
    with pytest.raises(ValueError, match="enrolled already"):
        again.enrol("ph1", 50_100.0)
    # a clean save folds the log into the file
    again.save(path)
    assert not (tmp_path / "creds.log").exists() and Issuer.load(path).enrolled.keys() == {"ph1", "gw1"}


def test_token_keys_and_a_torn_log_survive_a_crash_and_one_token_per_day_holds_under_load(tmp_path):
    """Reviewed defects, each reproduced before the fix: the token keys were made on first
    use and saved only at a clean stop (a killed server signed tomorrow with new keys, so
    every token of the day failed); a record torn by a crash made the next start lose or
    refuse the records appended after it; parallel requests got several tokens a day."""
    import concurrent.futures

    from yujing import tokens

    path = tmp_path / "creds"
    iss = Issuer.load(path)
    pub = iss.tokens.public_keys()["new"]
    acct, key = iss.tokens.open_account(1000.0)
    iss.flush_log()
    day = tokens.utc_day(1000.0 + 86_400.0)
    blinded = [tokens.blind(pub, tokens.message(day, f"p{i}")) for i in range(8)]

    def ask(b):
        try:
            return iss.tokens.sign(acct, day, "new", b.blinded, tokens.request_proof(key, day, b.blinded), 1000.0, 1e9)
        except ValueError:
            return None

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        got = [s for s in ex.map(ask, blinded) if s is not None]
    assert len(got) == 1, f"{len(got)} tokens for one account and day"
    # killed here (no save): the next start has the same keys, so the token verifies
    iss.enrol("ph1", 1001.0)
    iss.flush_log()
    with open(tmp_path / "creds.log", "ab") as f:
        f.write((200).to_bytes(4, "big") + b"\\x93torn")  # a record cut short by the crash
    again = Issuer.load(path)
    assert again.tokens.public_keys()["new"] == pub and "ph1" in again.enrolled
    again.enrol("ph2", 1002.0)
    again.flush_log()
    third = Issuer.load(path)  # what was appended after the torn record is kept
    assert {"ph1", "ph2"} <= third.enrolled.keys() and acct in third.tokens.accounts


def test_check_batch_admits_and_refuses_as_check_does_one_by_one():
    """The door over a batch: the same verdicts, in arrival order, as check() per message
    (a forged or replayed message between good ones refuses only itself)."""
    issuer = Issuer(bytes(range(32)))
    sign = Signer(issuer)
    wire = [sign.wire("hb", _hb("p1", 1000.0 + k)) for k in range(3)]
    wire += [sign.wire("trig", _trig("p2", onset=1000.0, update=u)) for u in range(3)]
    forged = bytearray(wire[1][1])
    forged[-1] ^= 0x01
    items = [wire[0], (wire[1][0], bytes(forged)), wire[1], wire[2], wire[0], wire[3],
             (wire[4][0], protocol.encode(_trig("p3"))), wire[4], wire[5], (wire[0][0], b"\xc1")]
    arrs = [1000.0 + 0.01 * k for k in range(len(items))]

    one = security.Guard(issuer)
    want = []
    for (t, p), a in zip(items, arrs):
        try:
            one.check(t, p, protocol.decode(t, p), a)
            want.append(None)
        except protocol.ProtocolError as exc:
            want.append(exc.reason)
    batch = security.Guard(issuer)
    msgs = protocol.decode_batch([t for t, _ in items], [p for _, p in items])
    got = [None if e is None else e.reason for e in batch.check_batch([t for t, _ in items], [p for _, p in items], msgs, arrs)]
    assert got == want
    assert got == [None, "bad_signature", None, None, "replayed", None, "unsigned", None, None, "corrupt_msgpack"]
