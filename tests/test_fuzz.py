"""Every decoder fuzzed (Hypothesis, derandomized: a CI run is the same run each time):
no crash, a clear error, a counter where the engine path counts rejects.

Already fuzzed elsewhere: ``protocol.decode`` (tests/test_protocol.py), the signature
fields at the service's door (tests/test_security.py), byte streams into the embedded MQTT
broker over TCP (tests/test_mqtt.py). Here: the alert decoder devices run, the service's
door for whole messages, the MQTT framer in-process, the OpenEEW file reader, the ingest
of raw packets, the API's JSON bodies, and the scale-out's parsers of what anyone who may
publish on NATS controls (subjects, headers) and of its configuration.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from pathlib import Path

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yujing import protocol, wire
from yujing.bus import mqtt_codec
from yujing.bus import nats as ynats
from yujing.records import Alert, AlertTier, Device, Packet
from yujing.rejects import Rejects
from yujing.scaleout import config_from_env, halo, rendezvous
from yujing.security import Issuer, Signer
from yujing.service import Service

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True),
                     st.text(max_size=20), st.binary(max_size=20))
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                       max_leaves=12)


# ----------------------------------------------------------------------------- alerts (devices)


def _an_alert() -> Alert:
    return Alert(alert_id="yj1-alert", event_id="yj1", version=1, msg_type="alert", issued_at_s=1.0, origin_time_s=0.0,
                 latitude=29.6, longitude=102.1, depth_km=10.0, magnitude=6.8, magnitude_sigma=0.3,
                 tiers=(AlertTier("take_action", 5.0, ("85283473fffffff",)),), h3_resolution=5, gmpe="bssa14")


@FUZZ
@given(st.binary(max_size=300))
def test_decode_alert_raises_only_value_errors_on_bytes(data):
    try:
        a = wire.decode_alert(data)
    except ValueError:
        return
    assert isinstance(a, Alert)


@FUZZ
@given(st.integers(0, 15), st.binary(max_size=40), _values)
def test_decode_alert_raises_only_value_errors_on_mangled_alerts(field, cells, value):
    """A real alert with one field replaced (the tiers' cell blobs by random bytes)."""
    raw = msgspec.msgpack.decode(wire.encode_alert(_an_alert()))
    if field == 12:
        raw[12] = [[t[0], t[1], cells] for t in raw[12]]
    else:
        raw[field] = value
    try:
        a = wire.decode_alert(msgspec.msgpack.encode(raw))
    except ValueError:
        return
    assert isinstance(a, Alert)


def test_decode_alert_round_trip():
    a = _an_alert()
    assert wire.decode_alert(wire.encode_alert(a)) == a


# ----------------------------------------------------------------------------- the service's door


@FUZZ
@given(st.sampled_from(protocol.KINDS + ("alert", "x")), st.text(max_size=20), _values)
def test_service_receive_never_raises_and_counts_every_refusal(kind, cell, body):
    """Whole messages, structured as msgpack maps with random fields, signed or not, on
    device topics with random cells: receive() never raises; a refusal is counted."""
    svc = Service(issuer=_ISSUER)
    topic = f"{protocol.TOPIC_ROOT}/{kind}/{cell}"
    payload = msgspec.msgpack.encode(body)
    before = svc.rejects.total
    ok = svc.receive(topic, payload, 1_700_000_000.0)
    assert ok or svc.rejects.total == before + 1
    svc.process_queue()  # and the engine takes what was accepted


_ISSUER = Issuer()


@FUZZ
@given(st.data())
def test_service_receive_never_raises_on_signed_mutants(data):
    """A valid signed trigger with any field set to a random value of its type family,
    then signed again (so that it gets past the signature to the checks behind it)."""
    svc = Service(issuer=_ISSUER)
    msg = protocol.TriggerMsg(device="d1", cell="87283472bffffff", sent_s=1_700_000_000.0, onset_s=1_699_999_999.0,
                              window_s=1.0, pga_gal=10.0, pgv_cm_s=1.0, pd_cm=0.1, tau_c_s=1.0, snr=10.0)
    fields = [f for f in msg.__struct_fields__ if f not in ("sig", "seq")]
    name = data.draw(st.sampled_from(fields))
    old = getattr(msg, name)
    if isinstance(old, float):
        new = data.draw(st.floats(allow_nan=True, allow_infinity=True))
    elif isinstance(old, int) and not isinstance(old, bool):
        new = data.draw(st.integers(-2**63, 2**63 - 1))
    elif isinstance(old, str):
        new = data.draw(st.text(max_size=40))
    else:
        new = data.draw(_scalars)
    try:
        msg = msgspec.structs.replace(msg, **{name: new})
        topic, payload = Signer(_ISSUER).wire("trig", msg)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return  # not even encodable: a device could not send it either
    before = svc.rejects.total
    ok = svc.receive(topic, payload, 1_700_000_000.5)
    assert ok or svc.rejects.total == before + 1
    svc.process_queue()
    svc.fire_timer()


# ----------------------------------------------------------------------------- MQTT framer


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_mqtt_framer_yields_packets_or_raises_mqtt_errors(chunks):
    f = mqtt_codec.Framer(max_packet=1024)
    try:
        for c in chunks:
            for b0, body in f.feed(c):
                assert isinstance(b0, int) and len(body) <= 1024
    except mqtt_codec.MqttError:
        pass


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 70))
def test_mqtt_read_str_raises_only_mqtt_errors(data, k):
    try:
        s, j = mqtt_codec.read_str(memoryview(data), k)
    except mqtt_codec.MqttError:
        return
    assert j <= len(data) and len(s) == j - k - 2


@FUZZ
@given(st.text(max_size=30), st.text(max_size=30))
def test_mqtt_topic_filters_never_raise(flt, topic):
    if mqtt_codec.valid_filter(flt):
        mqtt_codec.filter_matches(flt.split("/"), topic.split("/"))


# ----------------------------------------------------------------------------- OpenEEW files

_DEVICES = {"000": Device("000", 19.4, -99.1)}
_GOOD = (b'{"device_id":"000","cloud_t":1600000000.5,"device_t":1600000000.4,"sr":31.25,'
         b'"x":[0.1,0.2],"y":[0.1,0.2],"z":[0.1,0.2]}')


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=120).filter(lambda b: b"\n" not in b),
                          st.builds(lambda i, b: _GOOD[:i] + b + _GOOD[i:], st.integers(0, len(_GOOD)),
                                    st.binary(max_size=8).filter(lambda b: b"\n" not in b)),
                          st.just(_GOOD)), max_size=12))
def test_openeew_reader_yields_valid_packets_and_counts_the_rest(lines):
    """Random lines, and good lines with bytes spliced in: the reader yields packets
    whose axes agree, and every other non-blank line is counted with a reason."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "ev" / "000"
        folder.mkdir(parents=True)
        (folder / "00.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        rejects = Rejects()
        got = list(_iter_packets(Path(d) / "ev", rejects))
    for p in got:
        assert isinstance(p, Packet) and len(p.x_gal) == len(p.y_gal) == len(p.z_gal) > 0
        assert math.isfinite(p.arrival_time_s) and 0 < p.sample_rate_hz
    nonblank = sum(1 for ln in lines if ln.strip())
    assert len(got) + rejects.total == nonblank, (len(got), rejects.by_reason(), nonblank)


def _iter_packets(event_dir, rejects):
    from yujing.sources.openeew import iter_packets

    return iter_packets(event_dir, _DEVICES, rejects)


# ----------------------------------------------------------------------------- ingest (raw packets)

_f = st.floats(allow_nan=True, allow_infinity=True)


@FUZZ
@given(st.lists(st.tuples(_f, _f, _f, st.lists(_f, max_size=40), st.integers(0, 40), st.integers(0, 40)), max_size=6))
def test_ingest_accepts_or_counts_every_packet(pkts):
    """Packets with any times, rates and samples (axes of any lengths): accepted with a
    finite time line, or refused and counted; never an exception."""
    from yujing.ingest import Ingest

    rejects = Rejects()
    ing = Ingest(dict(_DEVICES), rejects)
    for d, c, sr, x, ny, nz in pkts:
        before = rejects.total
        p = Packet("000", d, c, sr, tuple(x), tuple(x[:ny]), tuple(x[:nz]))
        out = ing.accept(p)
        assert out is not None or rejects.total == before + 1


# ----------------------------------------------------------------------------- API bodies


def _api():
    from yujing.api.app import create_app

    class Replayer:  # the body's decoding is what is fuzzed; a real replay is tests/test_serve.py's
        calls = 0

        async def start(self, source, **kw):
            Replayer.calls += 1
            if source not in ("scenario", "openeew"):
                raise ValueError(f"unknown source {source!r}")
            return {"source": source}

    from yujing.api.auth import create_key
    from yujing.store import open_store

    store = open_store("sqlite:///" + str(Path(tempfile.mkdtemp()) / "fuzz.db"))
    key = create_key(store, "fuzz", "operator", "test_fuzz")
    svc = Service(issuer=Issuer(), store=store)
    return create_app(svc, replayer=Replayer()), key


_bodies = st.one_of(st.binary(max_size=200), _values.map(lambda v: msgspec.json.encode(v) if _jsonable(v) else b"{}"),
                    st.fixed_dictionaries({"pseudonyms": _values}).map(msgspec.json.encode),
                    st.fixed_dictionaries({"device": _scalars, "action": _scalars, "t_s": _scalars, "proof": _scalars})
                    .map(lambda v: msgspec.json.encode(v) if _jsonable(v) else b"{}"),
                    st.fixed_dictionaries({"source": _scalars, "phones": _scalars, "lead_s": _scalars})
                    .map(lambda v: msgspec.json.encode(v) if _jsonable(v) else b"{}"))


def _jsonable(v) -> bool:
    try:
        msgspec.json.encode(v)
        return True
    except (TypeError, msgspec.EncodeError, OverflowError):
        return False


@pytest.fixture(scope="module")
def api():
    return _api()


@FUZZ
@given(path=st.sampled_from(["/api/enrol", "/api/device/data", "/api/replay"]), body=_bodies)
def test_api_json_bodies_get_a_clear_error_never_a_500(api, path, body):
    """Any body on the routes that decode JSON, with the operator's key (so that the
    replay route decodes it too): 2xx or a 4xx/503 in the API's one error shape; never a
    500."""
    app, key = api

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                     headers={"authorization": f"Bearer {key}"}) as c:
            return await c.post(path, content=body, headers={"content-type": "application/json"})

    r = asyncio.run(go())
    assert r.status_code != 401, r.text  # the key works: the body is what is tested
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        j = r.json()
        assert isinstance(j, dict) and "error" in j, j


# ----------------------------------------------------------------------------- scale-out parsers


@FUZZ
@given(st.one_of(st.none(), st.text(max_size=30)))
def test_arrival_header_is_a_number_or_none(value):
    class M:
        headers = None if value is None else {ynats.ARRIVAL_HEADER: value}

    got = ynats._arrival_header(M())
    assert got is None or isinstance(got, float)


@FUZZ
@given(st.text(max_size=60))
def test_nats_urls_parse_or_raise_value_errors(url):
    try:
        out = ynats.parse_nats_url(url)
    except ValueError:
        return
    assert out and all(u.startswith("nats://") for u in out)


@FUZZ
@given(st.text(max_size=40), st.text(max_size=3), st.text(max_size=6))
def test_worker_config_from_env_raises_only_value_errors(regions, res, halo_km):
    try:
        cfg = config_from_env({"YJ_WORKER_ID": "w/1 ü", "YJ_REGIONS": regions, "YJ_REGION_RES": res, "YJ_HALO_KM": halo_km})
    except ValueError:
        return
    assert all(c.isalnum() or c in "-_" for c in cfg.worker_id)


@FUZZ
@given(st.text(max_size=20))
def test_a_subject_token_from_anyone_never_breaks_a_worker(token):
    """The last token of a device subject picks the shard (``region_of_token``): anyone
    who may publish can put anything there."""
    from yujing.scaleout import Worker, WorkerConfig

    w = Worker(["nats://127.0.0.1:1"], WorkerConfig(worker_id="w"))
    r = w.region_of_token(token)
    assert r is None or isinstance(r, str)
    assert rendezvous(token, ["a", "b"]) in ("a", "b")
    if r is not None:
        assert halo([r], 1, 300.0)


@pytest.mark.parametrize("token", ["", "8", "zz", "8140fffffffffff", "8a2a1072b59ffff", "0" * 15])
def test_region_of_token_examples(token):
    from yujing.scaleout import Worker, WorkerConfig

    w = Worker(["nats://127.0.0.1:1"], WorkerConfig(worker_id="w"))
    w.region_of_token(token)
