"""Shared fixtures: where the OpenEEW recordings are, the stores tests run on, and a
nats-server (JetStream, optionally its MQTT listener) on free ports.

Tests that need the recordings, or the PostgreSQL server, fail (never skip) when they are
missing (so does a missing nats-server binary), so that a CI run without them cannot pass by testing nothing.

PostgreSQL tests get a fresh schema per test on the server at ``PG_URL`` (override with
YUJING_TEST_POSTGRES_URL), dropped afterwards.
"""

from __future__ import annotations

import time

import contextlib

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from yujing.sources.openeew import ENV_DATA_DIR, default_data_dir


PG_URL = os.environ.get("YUJING_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_schema_url():
    """A store URL of a fresh PostgreSQL schema (``search_path`` set in the URL), dropped
    after the test."""
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(
            f"PostgreSQL not reachable at {PG_URL} ({str(e).strip()}); start it (the store "
            f"tests need it) or set YUJING_TEST_POSTGRES_URL"
        )
    schema = f"yj_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in PG_URL else "?"
        try:
            yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """Each test that takes it runs twice: on a SQLite file in tmp_path and on a fresh
    PostgreSQL schema."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "yujing.db")
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture(scope="session")
def openeew_dir() -> Path:
    """The OpenEEW data folder (devices.json, catalog.csv, events/)."""
    data = default_data_dir()
    if not (data / "devices.json").is_file() or not (data / "events").is_dir():
        pytest.fail(
            f"OpenEEW recordings not found at {data} (need devices.json and events/); "
            f"set {ENV_DATA_DIR} to the folder holding them"
        )
    return data


def load_script(path: Path, name: str):
    """Import a file of scripts/ (no package) as module ``name``, once. The module is put in
    sys.modules before it runs: dataclasses look their module up there."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


class FakeService:
    """Only what MqttLink uses of a service: a bus, a clock and receive()."""

    def __init__(self):
        from yujing.bus.memory import MemoryBus

        self.bus = MemoryBus()
        self.clock = time.time
        self.received = []

    def receive(self, topic, payload, arrival_s=None):
        self.received.append((topic, payload))
        return True

    def journaled(self):
        return None  # no journal: the broker acknowledges at once


@contextlib.asynccontextmanager
async def embedded_link():
    """An embedded broker with the service's link on it (a fake service behind):
    yields (broker, service, link)."""
    from yujing.bus.mqtt import MqttLink
    from yujing.bus.mqtt_broker import EmbeddedBroker

    broker = EmbeddedBroker("127.0.0.1", 0)
    await broker.start()
    svc = FakeService()
    link = MqttLink(f"tcp://127.0.0.1:{broker.port}", svc, broker=broker, client_id="svc")
    await link.start()
    try:
        yield broker, svc, link
    finally:
        await link.stop()
        await svc.bus.close()
        await broker.stop()


NATS_EXE = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def nats_server(d: Path, mqtt: bool = False):
    """One nats-server with JetStream (its store in ``d``) on a free port, and with
    ``mqtt`` its MQTT listener on another (NATS's MQTT needs JetStream and a server_name);
    killed on exit whatever happened. Yields (nats URL, MQTT URL or None). A missing
    binary is a failure, never a skip."""
    if not os.path.exists(NATS_EXE):
        pytest.fail(f"nats-server binary not found ({NATS_EXE}): these tests need a real server")
    port = free_port()
    mport = free_port() if mqtt else None
    conf = d / "nats.conf"
    text = f'server_name: yjtest\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: "{d}/js" }}\n'
    if mqtt:
        text += f"mqtt {{ listen: 127.0.0.1:{mport} }}\n"
    conf.write_text(text)
    log = open(d / "nats.log", "w")
    proc = subprocess.Popen([NATS_EXE, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        t = time.monotonic()
        for p in (port, mport) if mqtt else (port,):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", p), 0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() - t > 15:
                        pytest.fail(f"nats-server did not start: {(d / 'nats.log').read_text()[-2000:]}")
                    time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}", (f"tcp://127.0.0.1:{mport}" if mqtt else None)
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


@pytest.fixture
def nats_url(tmp_path):
    """A nats-server with JetStream for this test: its URL."""
    with nats_server(tmp_path) as (url, _):
        yield url


@pytest.fixture
def nats_mqtt_urls(tmp_path):
    """A nats-server with JetStream and its MQTT listener for this test: (nats URL, MQTT URL)."""
    with nats_server(tmp_path, mqtt=True) as urls:
        yield urls
