"""Retention: data not linked to an event is deleted after the retention period, by
``yujing purge`` and by the purge job of ``yujing serve``; each purge is in the audit log.

Every test runs on SQLite and PostgreSQL (conftest ``store_url``) with an injected clock:
no sleeps, no wall-clock margins.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import h3
import pytest

from yujing import protocol
from yujing.retention import DAY_S, RetentionPolicy, purge, purge_memory
from yujing.security import Issuer, Signer
from yujing.serve import ServeOptions, Server
from yujing.service import ManualClock, Service
from yujing.store import open_store

T0 = 1.75e9  # "now" of the tests, UNIX s
CELL = h3.latlng_to_cell(29.6, 102.1, 7)


def _hello(svc: Service, device: str, t_s: float, consent: bool = False) -> None:
    msg = protocol.HelloMsg(device=device, cell=CELL, sent_s=t_s, kind="phone", raw_consent=consent)
    assert svc.receive(*Signer(svc.issuer).wire("hello", msg), t_s)
    svc.process_queue()


def test_policy_defaults_and_refusals():
    p = RetentionPolicy()
    assert p.retention_s == 7 * DAY_S and p.cutoff(T0) == T0 - 7 * DAY_S and p.label() == "retention 7 d"
    assert RetentionPolicy.from_days(0.5).retention_s == 43_200.0
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of days"):
            RetentionPolicy.from_days(bad)
    with pytest.raises(ValueError, match="interval_s must be a positive"):
        RetentionPolicy(interval_s=0)


def test_purge_deletes_devices_silent_longer_than_the_period(store_url):
    with open_store(store_url) as st:
        st.note_devices([
            ("old", CELL, "phone", T0 - 8 * DAY_S, False),
            ("edge", CELL, "phone", T0 - 7 * DAY_S, False),  # exactly the period: kept
            ("new", CELL, "sensor", T0 - 1 * DAY_S, True),
        ])
        counts = purge(st, T0, RetentionPolicy.from_days(7))
        assert counts == {"devices": 1, "audit_subject_keys": 0}
        assert st.device("old") is None and st.device("edge") and st.device("new")
        # the purge is in the audit log, with the cut-off and counts, not the pseudonym
        [row] = st.audit_log()
        assert (row["actor"], row["action"], row["at_s"], row["purpose"]) == (
            "system:retention", "purge", T0, "retention 7 d")
        assert "devices=1" in row["target"] and "old" not in row["target"]
        # a week later, with nothing heard since, nothing is left
        assert purge(st, T0 + 7 * DAY_S, RetentionPolicy())["devices"] == 2
        assert st.verify_audit() == (True, None)


def test_audit_rows_outlive_the_pseudonyms_they_named(store_url):
    """The audit log is append-only and kept; a device read stays in it, but once the
    retention period has passed nobody can tell which pseudonym it was about."""
    with open_store(store_url) as st:
        st.note_device("0123456789abcdef", CELL, "phone", T0)
        st.audit("operator:ana", "read_device", "0123456789abcdef", "ticket 1", T0 + 10)
        assert len(st.audit_rows_about("0123456789abcdef")) == 1
        purge(st, T0 + 6 * DAY_S, RetentionPolicy())  # within the period: still answerable
        assert len(st.audit_rows_about("0123456789abcdef")) == 1
        counts = purge(st, T0 + 7 * DAY_S + 3600, RetentionPolicy())
        assert counts == {"devices": 1, "audit_subject_keys": 1}
        assert st.audit_rows_about("0123456789abcdef") == []
        assert [r["action"] for r in st.audit_log()] == ["purge", "purge", "read_device"]
        assert st.verify_audit() == (True, None)


def test_purge_memory_forgets_what_a_service_holds():
    clock = ManualClock(T0)
    # an issuer of its own: the process's default one holds what other tests enrolled
    svc = Service(clock=clock, issuer=Issuer())
    _hello(svc, "oldphone", T0 - 8 * DAY_S)
    _hello(svc, "newphone", T0 - 60.0)
    svc.issuer.enrol("oldenrol", T0 - 9 * DAY_S)
    svc.issuer.enrol("newenrol", T0 - 1.0)
    got = purge_memory(svc, T0 - 7 * DAY_S)
    assert got == {"memory_registry": 1, "memory_recent_triggers": 0, "memory_enrolments": 1}
    assert set(svc.registry.devs) == {"newphone"} and "oldphone" not in svc.registry.dirty
    assert set(svc.issuer.enrolled) == {"newenrol"}


def test_serve_purges_at_start_and_on_its_interval(store_url):
    """The server's job: a purge before it takes requests, then one per interval, each of
    the store and of the service's memory. The clock and the wait are the test's."""
    clock = ManualClock(T0)
    with open_store(store_url) as st:
        st.note_devices([("stale", CELL, "phone", T0 - 30 * DAY_S, False),
                         ("fresh", CELL, "phone", T0 - DAY_S, False)])
    waits: asyncio.Queue = asyncio.Queue()

    async def fake_sleep(seconds):
        gate = asyncio.Event()
        await waits.put((seconds, gate))
        await gate.wait()

    async def go():
        opts = ServeOptions(port=0, mqtt_port=0, store=store_url, replay=False,
                            retention=RetentionPolicy.from_days(7, interval_s=1800.0))
        srv = Server(opts, clock=clock, sleep=fake_sleep)
        await srv.start()
        try:
            assert srv.last_purge["devices"] == 1  # at start, before any request
            assert srv.store.device("stale") is None and srv.store.device("fresh")
            _hello(srv.service, "livephone", T0)
            # the loop waits for its interval; the test lets one round go by
            seconds, gate = await waits.get()
            assert seconds == 1800.0
            clock.t_s = T0 + 8 * DAY_S
            gate.set()
            _, next_gate = await waits.get()  # the round is done when the loop waits again
            assert srv.last_purge["devices"] == 1 and srv.last_purge["memory_registry"] == 1
            assert "livephone" not in srv.service.registry.devs
            assert srv.store.device("fresh") is None
        finally:
            await srv.stop()

    asyncio.run(go())
    with open_store(store_url) as st:
        purges = [r for r in st.audit_log() if r["action"] == "purge"]
        assert [r["at_s"] for r in purges] == [T0 + 8 * DAY_S, T0]
        assert all(r["actor"] == "system:retention" and r["purpose"] == "retention 7 d" for r in purges)
        assert "memory_registry=1" in purges[0]["target"]


def test_yujing_purge_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'y.db'}"
    now = time.time()
    with open_store(url) as st:  # margins of days: the command reads the real clock
        st.note_devices([("gone", CELL, "phone", now - 30 * DAY_S, False),
                         ("kept", CELL, "phone", now - 2 * DAY_S, False)])
    run = lambda *a: subprocess.run([sys.executable, "-m", "yujing.cli", "purge", "--store", url, *a],
                                    capture_output=True, text=True, timeout=120)
    r = run("--older-than", "7")
    assert r.returncode == 0, r.stderr
    assert "devices 1" in r.stdout
    r = run("--older-than", "1")
    assert r.returncode == 0 and "devices 1" in r.stdout
    r = run("--older-than", "-3")
    assert r.returncode == 2 and "positive number of days" in r.stderr
    with open_store(url) as st:
        assert st.device("gone") is None and st.device("kept") is None
        rows = [r for r in st.audit_log() if r["action"] == "purge"]
        assert len(rows) == 2 and all(r["actor"].startswith("cli:") for r in rows)
