"""The store, on both back ends: SQLite (a file in tmp_path) and PostgreSQL.

PostgreSQL tests use a fresh schema per test (tests/conftest.py: ``store_url``). When the
server is unreachable they fail, never skip, so that a run without PostgreSQL cannot pass
by testing half the store.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import threading

import h3
import msgspec
import psycopg
import pytest

from yujing.records import Alert, AlertTier, EventUpdate
from yujing.store import SCHEMA_LATEST, StoreError, open_store, parse_url
from yujing.store.backend import connect
from yujing.store.migrations import STEPS, migrate
from yujing.store.sql import Store

# Deterministic places: cells around Oaxaca, Mexico.
LAT, LON = 16.5, -98.5
CELL7 = h3.latlng_to_cell(LAT, LON, 7)
CELL5 = h3.cell_to_parent(CELL7, 5)


@pytest.fixture
def url(store_url):
    # conftest.store_url: a SQLite file, then a fresh PostgreSQL schema
    return store_url


@pytest.fixture
def store(url):
    s = open_store(url)
    yield s
    s.close()


def raw(url: str, sql: str) -> list[tuple]:
    """Run SQL on a connection of its own, behind the store's back."""
    dialect, target = parse_url(url)
    if dialect == "sqlite":
        conn = sqlite3.connect(target, isolation_level=None)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    with psycopg.connect(target, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def update(event_id="yjA", version=1, **kw) -> EventUpdate:
    fields = dict(issued_at_s=1.7e9 + 10 + version, origin_time_s=1.7e9, latitude=LAT,
                  longitude=LON, depth_km=15.0, magnitude=5.5, magnitude_sigma=0.3, n_devices=4)
    fields.update(kw)
    return EventUpdate(event_id, version, **fields)


def alert(alert_id="alA", event_id="yjA", version=1, issued_at_s=1.7e9 + 11, **kw) -> Alert:
    fields = dict(msg_type="alert" if version == 1 else "update", issued_at_s=issued_at_s,
                  origin_time_s=1.7e9, latitude=LAT, longitude=LON, depth_km=15.0, magnitude=5.5,
                  magnitude_sigma=0.3, tiers=(AlertTier("be_aware", 3.0, (CELL5,)),
                                              AlertTier("take_action", 5.0, (CELL7,))),
                  h3_resolution=7, gmpe="BSSA14", event_version=version)
    fields.update(kw)
    return Alert(alert_id, event_id, version, **fields)


# -- URLs and errors (no database needed) ------------------------------------------------

def test_store_urls():
    assert parse_url("x.db") == ("sqlite", "x.db")
    assert parse_url("sqlite:///data/x.db") == ("sqlite", "data/x.db")
    assert parse_url("sqlite:////var/lib/x.db") == ("sqlite", "/var/lib/x.db")
    assert parse_url("sqlite://:memory:") == ("sqlite", ":memory:")
    assert parse_url("sqlite://") == ("sqlite", ":memory:")
    assert parse_url("postgresql://u@h:5432/db") == ("postgresql", "postgresql://u@h:5432/db")
    with pytest.raises(ValueError, match=r"unknown store URL scheme 'mysql'.*postgresql://"):
        parse_url("mysql://u:secret@h/db")
    with pytest.raises(ValueError, match="sqlite:///relative.db"):
        parse_url("sqlite://x.db")


def test_memory_store_works():
    with open_store("sqlite://:memory:") as s:
        s.save_update(update())
        assert s.event("yjA")["version"] == 1


def test_unreachable_postgres_names_the_url_and_what_to_check():
    with pytest.raises(StoreError, match=r"postgresql://postgres:\*\*\*@127\.0\.0\.1:1/test.*check"):
        open_store("postgresql://postgres:secret@127.0.0.1:1/test")


def test_missing_sqlite_folder_says_so(tmp_path):
    with pytest.raises(StoreError, match="folder exists"):
        open_store(tmp_path / "no" / "such" / "dir" / "x.db")


def test_migration_steps_are_numbered_in_order():
    assert [s.version for s in STEPS] == list(range(1, SCHEMA_LATEST + 1))


# -- events -------------------------------------------------------------------------------

def test_updates_round_trip_and_event_follows_newest(store):
    # Floats that do not print short must come back bit for bit; device ids never come back
    # (the store does not keep them: they would tie devices to the event for ever).
    v1 = update(version=1, latitude=0.1 + 0.2, magnitude=5.0 / 3, device_ids=("d1", "d2", "dé"))
    v2 = update(version=2, origin_time_s=1.7e9 + 0.25, depth_km=21.5, magnitude=6.1,
                n_devices=9, horizontal_error_km=4.2, device_ids=("d1", "d2", "d3"))
    store.save_update(v2)  # out of order, as after a restart: the row still follows v2
    store.save_update(v1)
    no_ids = [msgspec.structs.replace(v, device_ids=()) for v in (v1, v2)]
    assert store.updates("yjA") == no_ids
    assert store.event("yjA") == {
        "event_id": "yjA", "version": 2, "first_issued_s": v1.issued_at_s,
        "last_issued_s": v2.issued_at_s, "origin_time_s": v2.origin_time_s, "latitude": LAT,
        "longitude": LON, "depth_km": 21.5, "magnitude": 6.1, "n_devices": 9, "retracted": False,
    }
    store.save_update(update(version=3, retracted=True))
    assert store.event("yjA")["retracted"] is True
    assert store.event("nope") is None and store.updates("nope") == []


def test_resaving_an_update_is_ignored(store, url):
    u = update()
    store.save_update(u)
    store.save_update(u)
    store.save_update(msgspec.structs.replace(u, magnitude=9.9))  # same version: first one stays
    assert store.updates("yjA") == [u]
    assert store.event("yjA")["magnitude"] == 5.5
    assert raw(url, "SELECT count(*) FROM event_updates") == [(1,)]


def test_events_newest_first_with_limit_since_and_retracted(store):
    for i in range(5):
        store.save_update(update(f"yj{i}", origin_time_s=1000.0 + 10 * i, retracted=(i == 3)))
    assert [e["event_id"] for e in store.events()] == ["yj4", "yj3", "yj2", "yj1", "yj0"]
    assert [e["event_id"] for e in store.events(limit=2)] == ["yj4", "yj3"]
    assert [e["event_id"] for e in store.events(since_s=1020.0)] == ["yj4", "yj3", "yj2"]
    assert [e["event_id"] for e in store.events(include_retracted=False)] == ["yj4", "yj2", "yj1", "yj0"]
    assert store.events(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        store.events(limit=-1)


# -- alerts -------------------------------------------------------------------------------

def test_alerts_round_trip_order_and_idempotence(store):
    a1 = alert(version=1, issued_at_s=100.0)
    a2 = alert(version=2, issued_at_s=103.5, magnitude=6.0 + 1e-9)
    b1 = alert("alB", "yjB", version=1, issued_at_s=101.0)
    cancel = alert(version=3, issued_at_s=110.0, msg_type="cancel", tiers=())
    for a in (a1, b1, a2, cancel, a2):
        store.save_alert(a)
    assert store.alerts() == [cancel, a2, b1, a1]
    assert store.alerts(event_id="yjA") == [cancel, a2, a1]
    assert store.alerts(since_s=101.0, limit=2) == [cancel, a2]
    assert store.latest_alert("alA") == cancel
    assert store.latest_alert("alB") == b1
    assert store.latest_alert("nope") is None


# -- device registry ----------------------------------------------------------------------

def test_only_cells_of_resolution_7_or_coarser_are_kept(store, url):
    cell8 = h3.latlng_to_cell(LAT, LON, 8)
    with pytest.raises(ValueError, match=rf"{cell8}.*resolution 8.*<= 7"):
        store.note_device("p8", cell8, "phone", 10.0)
    with pytest.raises(ValueError, match="not a valid H3 cell"):
        store.note_device("px", "16.5,-98.5", "phone", 10.0)
    with pytest.raises(ValueError, match="phone, sensor"):
        store.note_device("px", CELL7, "tablet", 10.0)
    store.note_device("p7", CELL7, "phone", 10.0)
    store.note_device("p5", CELL5.upper(), "sensor", 10.0, raw_consent=True)
    assert store.device("p7")["cell"] == CELL7
    assert store.device("p5")["cell"] == CELL5 and store.device("p5")["raw_consent"] is True
    assert store.device("p8") is None
    cells = [c for (c,) in raw(url, "SELECT cell FROM devices")]
    assert max(h3.get_resolution(c) for c in cells) <= 7


def test_device_sightings_update_the_row(store):
    store.note_device("p1", CELL7, "phone", 100.0)
    other = h3.latlng_to_cell(LAT + 0.5, LON, 7)
    store.note_device("p1", other, "phone", 200.0, raw_consent=True)
    store.note_device("p1", CELL7, "phone", 150.0)  # late, older sighting: keeps the newest cell
    assert store.device("p1") == {"pseudonym": "p1", "cell": other, "kind": "phone",
                                  "first_seen_s": 100.0, "last_seen_s": 200.0, "raw_consent": True}
    assert store.delete_device("p1") is True
    assert store.delete_device("p1") is False
    assert store.device("p1") is None


def test_a_batch_of_sightings_is_all_or_nothing(store):
    assert store.note_devices([("p1", CELL7, "phone", 1.0, False), ("p2", CELL5, "sensor", 2.0, True)]) == 2
    assert store.device("p2")["raw_consent"] is True
    cell8 = h3.latlng_to_cell(LAT, LON, 8)
    with pytest.raises(ValueError, match="resolution 8"):
        store.note_devices([("p3", CELL7, "phone", 3.0, False), ("p4", cell8, "phone", 3.0, False)])
    assert store.device("p3") is None


def test_devices_per_cell_is_k_anonymous(store):
    crowded = sorted(h3.cell_to_children(CELL5, 7))[:3]  # three res-7 cells in one res-5 cell
    lonely = h3.latlng_to_cell(LAT + 2.0, LON, 7)
    n = 0
    for cell, count in zip(crowded, (5, 2, 1)):
        for _ in range(count):
            store.note_device(f"p{n}", cell, "phone", 1000.0)
            n += 1
    store.note_device("lone", lonely, "sensor", 1000.0)
    store.note_device("stale", crowded[0], "phone", 10.0)  # seen before since_s: not counted
    store.note_device("coarse", CELL5, "sensor", 1000.0)   # res 5: not placeable at res 7

    assert store.devices_per_cell(7, since_s=500.0, k=3) == {crowded[0]: 5}
    census = store.cell_census(7, since_s=500.0, k=3)
    assert (census.suppressed_cells, census.suppressed_devices, census.too_coarse_devices) == (3, 4, 1)
    assert store.devices_per_cell(5, since_s=500.0, k=3) == {CELL5: 9}  # 5 + 2 + 1 + the res-5 one
    assert store.devices_per_cell(5, since_s=0.0, k=10) == {CELL5: 10}
    assert store.devices_per_cell(5, since_s=500.0) == {}  # default k = 10
    with pytest.raises(ValueError, match="resolution 0..7"):
        store.devices_per_cell(8, since_s=0.0)


def test_purge_forgets_devices_not_seen_since(store):
    for i, t in enumerate((10.0, 20.0, 30.0)):
        store.note_device(f"p{i}", CELL7, "phone", t)
    assert store.purge(before_s=25.0, at_s=40.0) == {"devices": 2, "audit_subject_keys": 0}
    assert store.device("p0") is None and store.device("p2") is not None
    assert store.purge(before_s=25.0, at_s=41.0)["devices"] == 0
    # each purge is in the audit log: who, when, the cut-off and counts; no pseudonym
    rows = [r for r in store.audit_log() if r["action"] == "purge"]
    assert [(r["actor"], r["at_s"], r["target"]) for r in rows] == [
        ("system:retention", 41.0, "before 1970-01-01T00:00:25Z: devices=0, audit_subject_keys=0"),
        ("system:retention", 40.0, "before 1970-01-01T00:00:25Z: devices=2, audit_subject_keys=0"),
    ]
    assert store.verify_audit() == (True, None)


def test_a_purged_row_is_overwritten_in_the_sqlite_file(tmp_path):
    # secure_delete: the retention purge must not leave the pseudonym in a free page
    path = tmp_path / "y.db"
    with open_store(f"sqlite:///{path}") as s:
        s.note_device("canary0123456789", CELL7, "phone", 10.0)
        s.purge(before_s=20.0, at_s=30.0)
    for f in tmp_path.iterdir():  # the database and its WAL
        assert b"canary0123456789" not in f.read_bytes(), f


# -- audit log: no pseudonym in the clear -------------------------------------------------

def test_audit_keeps_pseudonyms_only_as_keyed_tags(store, url):
    p = "9f86d081884c7d65"  # shaped like a daily pseudonym (64 bits, hex)
    store.audit("operator:ana", "read_device", p, f"ticket 7 about {p}", 3600.0 * 10 + 5)
    store.audit(f"device:{p}", "device_export", p, "data subject request", 3600.0 * 10 + 9)
    store.audit("operator:ana", "read_triggers", "res5 areas", "ticket 8", 3600.0 * 11)
    store.audit("operator:bo", "read_thing", "x", "ticket 9", 3600.0 * 11 + 1, subjects=["x"])
    dump = repr(raw(url, "SELECT * FROM audit_log"))
    assert p not in dump
    rows = {r["seq"]: r for r in store.audit_log()}
    tag = rows[1]["target"]
    assert tag.startswith("dev#") and len(tag) == 4 + 32
    # one key per hour: the same pseudonym gets the same tag within it, everywhere in the row
    assert rows[1]["purpose"] == f"ticket 7 about {tag}"
    assert rows[2]["actor"] == f"device:{tag}" and rows[2]["target"] == tag
    assert rows[3]["target"] == "res5 areas"  # not a device: kept as written
    assert rows[4]["target"].startswith("dev#")  # the caller named it a subject
    assert store.verify_audit() == (True, None)
    # while the key lives, the rows about a pseudonym can be found from the pseudonym
    assert [r["seq"] for r in store.audit_rows_about(p)] == [1, 2]
    # the purge deletes a key once its whole hour is older than the cut-off; the rows stay
    # (append-only, chain intact) but nobody can tell any more whom the tags named
    got = store.purge(before_s=3600.0 * 11, at_s=3600.0 * 12)
    assert got["audit_subject_keys"] == 1
    assert store.audit_rows_about(p) == []
    assert len(store.audit_log()) == 5 and store.verify_audit() == (True, None)
    assert raw(url, "SELECT period FROM audit_subject_keys") == [(11,)]


# -- audit log ----------------------------------------------------------------------------

def _documented_hash(prev, seq, at_s, *texts):
    # docs/store.md's layout, restated independently of yujing.store.audit.
    def frame(b):
        return len(b).to_bytes(4, "big") + b
    msg = b"yujing-audit-v1" + frame(bytes.fromhex(prev)) + frame(seq.to_bytes(8, "big", signed=True))
    msg += frame(struct.pack(">d", at_s)) + b"".join(frame(t.encode()) for t in texts)
    return hashlib.sha256(msg).hexdigest()


def _fill_audit(store, n=5):
    return [store.audit("ops:ana", "read_device", f"p{i}", "support ticket #7 — ünïcode", 100.0 + i / 3)
            for i in range(1, n + 1)]


def test_audit_chain_layout(store):
    hashes = _fill_audit(store)
    rows = store.audit_log()
    assert [r["seq"] for r in rows] == [5, 4, 3, 2, 1]  # newest first
    prev = "0" * 64
    for r, h in zip(reversed(rows), hashes):
        assert r["prev_hash"] == prev
        assert r["hash"] == h == _documented_hash(prev, r["seq"], r["at_s"], r["actor"], r["action"],
                                                  r["target"], r["purpose"])
        prev = h
    assert store.verify_audit() == (True, None)
    assert store.audit_log(limit=2)[0]["seq"] == 5


def test_audit_tampering_is_refused_then_detected(store, url):
    _fill_audit(store)
    with pytest.raises(Exception, match="append-only"):
        raw(url, "UPDATE audit_log SET purpose = 'nothing to see' WHERE seq = 3")
    # Someone with the database's owner rights can drop the guard; the chain still tells.
    if store.dialect == "sqlite":
        raw(url, "DROP TRIGGER audit_log_no_update")
    else:
        raw(url, "DROP TRIGGER audit_log_no_change ON audit_log")
    raw(url, "UPDATE audit_log SET purpose = 'nothing to see' WHERE seq = 3")
    assert store.verify_audit() == (False, 3)


def test_audit_row_removed_is_detected(store, url):
    _fill_audit(store)
    with pytest.raises(Exception, match="append-only"):
        raw(url, "DELETE FROM audit_log WHERE seq = 2")
    if store.dialect == "sqlite":
        raw(url, "DROP TRIGGER audit_log_no_delete")
    else:
        raw(url, "DROP TRIGGER audit_log_no_change ON audit_log")
    raw(url, "DELETE FROM audit_log WHERE seq = 2")
    assert store.verify_audit() == (False, 3)


def test_audit_refuses_what_it_cannot_keep_exactly(store):
    with pytest.raises(ValueError, match="NUL"):
        store.audit("a\x00", "read", "t", "p", 1.0)
    with pytest.raises(ValueError, match="finite"):
        store.audit("a", "read", "t", "p", float("nan"))


# -- migrations ---------------------------------------------------------------------------

def test_migrating_an_older_database_keeps_its_data_and_twice_is_a_noop(url):
    db = connect(url)
    assert migrate(db, target=1) == [1]
    old = Store(db)
    old.save_update(update())
    assert old.schema_version() == 1
    old.close()

    with open_store(url) as s:  # applies 2.. only
        assert s.schema_version() == SCHEMA_LATEST
        assert s.updates("yjA") == [update()]
        s.note_device("p1", CELL7, "phone", 1.0)
        s.audit("a", "read", "p1", "test", 2.0)
        assert s.migrate() == []
    before = raw(url, "SELECT version, applied_at_s FROM schema_migrations ORDER BY version")
    assert [v for v, _ in before] == list(range(1, SCHEMA_LATEST + 1))
    with open_store(url) as s:
        assert s.verify_audit() == (True, None)
    assert raw(url, "SELECT version, applied_at_s FROM schema_migrations ORDER BY version") == before


def test_a_database_newer_than_the_code_is_refused(url):
    open_store(url).close()
    raw(url, "INSERT INTO schema_migrations (version, applied_at_s) VALUES (999, 0)")
    with pytest.raises(StoreError, match="schema version 999.*upgrade yujing"):
        open_store(url)


# -- threads ------------------------------------------------------------------------------

def _run(workers):
    errors = []

    def guarded(fn):
        try:
            fn()
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_two_threads_share_one_store(store):
    def work(tag):
        def go():
            for i in range(40):
                store.save_update(update(f"{tag}{i}", version=1))
                store.save_update(update(f"{tag}{i}", version=2))
                store.note_device(f"{tag}{i}", CELL7, "phone", float(i))
                store.audit(tag, "read_device", f"{tag}{i}", "test", float(i))
                store.events(limit=5)
        return go

    _run([work("a"), work("b")])
    assert len(store.events(limit=1000)) == 80
    assert all(e["version"] == 2 for e in store.events(limit=1000))
    assert store.devices_per_cell(7, since_s=0.0, k=1) == {CELL7: 80}
    assert store.verify_audit() == (True, None)
    assert len(store.audit_log(limit=1000)) == 80


def test_two_stores_append_to_one_audit_chain(url):
    stores = [open_store(url), open_store(url)]
    try:
        def work(s, tag):
            return lambda: [s.audit(tag, "read", str(i), "test", float(i)) for i in range(30)]
        _run([work(stores[0], "a"), work(stores[1], "b")])
        assert stores[0].verify_audit() == (True, None)
        assert sorted(r["seq"] for r in stores[1].audit_log(limit=100)) == list(range(1, 61))
    finally:
        for s in stores:
            s.close()


def test_two_workers_starting_together_migrate_once(url):
    opened = []
    _run([lambda: opened.append(open_store(url)) for _ in range(2)])
    for s in opened:
        s.close()
    assert raw(url, "SELECT version FROM schema_migrations ORDER BY version") == [
        (v,) for v in range(1, SCHEMA_LATEST + 1)
    ]


def test_a_second_save_says_same_or_conflict(store):
    assert store.save_alert(alert()) == "saved"
    assert store.save_alert(alert()) == "same"  # a retried write
    assert store.save_alert(alert(magnitude=6.1)) == "conflict"  # another record, same (id, version)
    assert store.latest_alert("alA") == alert()  # the first stays
    assert store.save_update(update()) == "saved" and store.save_update(update()) == "same"
    assert store.save_update(update(magnitude=6.0)) == "conflict"


def test_the_journal_keeps_accepted_messages_in_order_and_forgets_them(url, store):
    from yujing.store import Journal

    j = Journal.open(url)
    if j is None:
        pytest.fail("a file or PostgreSQL store has a journal")
    try:
        j.clear()
        rows = [(100.0 + i, f"yj/v1/trig/c{i}", bytes([i, 0, 255])) for i in range(5)]
        assert j.append(rows) == 5 and j.append([]) == 0
        assert j.since(102.0) == rows[2:]
        assert j.purge(before_s=101.0) == 1 and j.count() == 4
        assert j.purge(before_s=0.0, max_rows=2) == 2 and j.since(0.0) == rows[3:]
        # the retention purge also takes what a server that died left behind
        assert store.purge(before_s=104.0, at_s=200.0)["journal"] == 1
        assert "journal" not in store.purge(before_s=104.0, at_s=201.0)  # named only when some went
        assert j.clear(final=True) == 1 and j.append(rows) == 0  # a clean stop: nothing more
    finally:
        j.close()
    assert Journal.open("sqlite://:memory:") is None
