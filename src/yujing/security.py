"""Device security: credentials, message signatures, replay windows, trigger rate limits
and the proofs behind a device's data-rights requests. docs/security.md says why.

**Credentials.** A credential is a pseudonym and its key: ``key = BLAKE2b-256(pseudonym,
key=master, person="yj-cred-v1")``, where ``master`` is the server's secret (:class:`Issuer`).
The server keeps no key table: it derives a key from the pseudonym a message names (and
caches it). A phone's pseudonym is its *daily* pseudonym, so its credential is a daily
credential too: nothing on the wire or in the server's state stays the same from one day
to the next. A credential is issued by enrolment (``POST /api/enrol``, first come per
pseudonym) or, for traffic the server's own process makes (the replay control, the demo,
tests), by :meth:`Issuer.credential` directly.

**Signature.** ``sig`` (the last field of every device message) is 20 bytes: the issuer's
4-byte key id (``kid``, the same for every device of a server: it names the master, not a
device) and a 16-byte tag: keyed BLAKE2b (RFC 7693's MAC mode, digest 16 bytes) of
``topic`` (MQTT spelling, ``/``) 0x00 and the payload up to the tag. Binding the topic stops a message being moved
to another kind's topic. Keyed BLAKE2b, not HMAC-SHA256: the same security as a MAC (a
PRF under its key), ~3x cheaper per message in CPython (0.8 against 2.2 us for a trigger
here), in every language's crypto library (libsodium ``crypto_generichash``), and already
what the devices use for their pseudonyms (:func:`yujing.sources.simulator.daily_pseudonym`).

**Replays.** ``seq`` counts a credential's messages (all kinds), from 1. The server keeps
per credential the highest ``seq`` seen and a bitmap of the ``SEQ_WINDOW`` before it: a
message may arrive up to ``SEQ_WINDOW`` places out of order; a repeat is ``replayed``, one
older than the window ``seq_too_old``.

**Rate limits.** Trigger messages per credential and trigger onsets (``update`` 0) per
reporting cell pass token buckets (:data:`TRIGGER_BURST` etc.); the excess is counted
(``rate_limited_device``, ``rate_limited_cell``) and never reaches the engine, nor do the
updates of an onset that was refused.
"""

from __future__ import annotations

import os
import hashlib
import hmac
import math
import secrets
import threading
from pathlib import Path

import msgspec

from . import protocol
from .protocol import ProtocolError, TriggerMsg as _TriggerMsg
from .tokens import TokenIssuer

KID_LEN = 4
TAG_LEN = 16
SIG_LEN = KID_LEN + TAG_LEN
#: How a signed payload ends before the kid and tag: msgpack key "sig", bin8 of 20 bytes.
SIG_TAIL = b"\xa3sig\xc4" + bytes([SIG_LEN])
_ZERO_TAG = bytes(TAG_LEN)
_CRED_PERSON = b"yj-cred-v1"
_DATA_PERSON = b"yj-data-v1"
_blake2b = hashlib.blake2b


def mac(key: bytes, data: bytes) -> bytes:
    """The 16-byte tag of ``data`` under ``key`` (keyed BLAKE2b)."""
    return _blake2b(data, key=key, digest_size=TAG_LEN).digest()

#: Out-of-order arrivals accepted per credential, in ``seq`` places.
SEQ_WINDOW = 256
_WINDOW_MASK = (1 << SEQ_WINDOW) - 1
#: Trigger messages per credential: a bucket of TRIGGER_BURST refilled at TRIGGER_RATE_PER_S.
#: A phone's event is one onset and an amplitude update a second for ~30 s (the
#: simulator's phones send at most ~35); 60 a minute sustained is far more than any real
#: sequence of events, a device sending hundreds a minute is throttled within a minute.
TRIGGER_BURST = 120.0
TRIGGER_RATE_PER_S = 1.0
#: Onsets (update 0) per credential: a phone triggers a few times a day at most.
ONSET_BURST = 10.0
ONSET_RATE_PER_S = 1.0 / 60.0
#: Onsets per reporting cell (res <= 7, ~5 km^2). Generous: in a dense city thousands of
#: phones share a cell and all trigger in a strong quake; the engine needs only a sample of
#: them (the cell centre is every one's position), but a cell throttled hard would make its
#: ready, silent phones look like evidence against the event (see docs/security.md).
CELL_ONSET_BURST = 300.0
CELL_ONSET_RATE_PER_S = 10.0
#: Enrolments younger than this are "young" (s): longer than any new_device_s in use. When
#: a flood of enrolments forces young ones out of a full table, unknown pseudonyms count as
#: new for a while (a fake must not become "established" by being forgotten).
PROTECT_ENROLMENT_S = 24 * 3600.0
#: A data-rights proof is good for this long either side of the server's clock, s.
PROOF_MAX_AGE_S = 300.0


class Issuer:
    """The server's credential authority: ``master`` (32 random bytes unless given) and
    the pseudonyms enrolled through the API (first come: a pseudonym enrolled once cannot
    be enrolled again, so whoever learns a pseudonym cannot get its key)."""

    def __init__(self, master: bytes | None = None, max_enrolled: int = 5_000_000):
        self.master = master if master is not None else secrets.token_bytes(32)
        if len(self.master) < 16:
            raise ValueError("the credential master must be at least 16 bytes")
        self.kid = hashlib.blake2b(self.master, digest_size=KID_LEN, person=b"yj-kid").digest()
        self.enrolled: dict[str, float] = {}  # pseudonym -> enrolled at, server s
        # pseudonyms an operator (or its gateway, the load generator) vouched for when
        # enrolling them: trusted at once, where a self-enrolled one is new for a while
        # (Settings.associate.new_device_s: the engine's defence against enrolled fakes)
        self.vouched: set[str] = set()
        self.max_enrolled = max_enrolled
        # A master made just now (a first start, or a store without a credentials file
        # restarted) has every device enrol afresh: were they all new, the network could
        # announce nothing for new_device_s. Enrolments before grace_until_s are taken as
        # established; the service sets it (and says so) when it starts on a fresh master.
        self.fresh = master is None
        self.grace_until_s = -math.inf
        # changes since the last save, appended to <credentials file>.log (flush_log)
        # before a credential leaves the server: a crash must not forget an enrolment
        self.log_path: Path | None = None
        self.path: Path | None = None  # the credentials file, once loaded from one
        self._pending: list = []
        self._log_lock = threading.Lock()
        # when young enrolments last had to be dropped to make room (a flood): unknown
        # pseudonyms count as new for new_device_s after it (one of them may be a fake
        # whose enrolment was forgotten)
        self.forgot_young_s = -math.inf
        # long-lived accounts and the blind-signed daily tokens they get (yujing.tokens):
        # a pseudonym enrolled with an established token is vouched for, unlinkably
        self.tokens = TokenIssuer(self.master)
        self.tokens.log = self._log

    def key(self, pseudonym: str) -> bytes:
        """The 32-byte HMAC key of ``pseudonym``'s credential."""
        return _blake2b(pseudonym.encode(), key=self.master[:64], digest_size=32, person=_CRED_PERSON).digest()

    def credential(self, pseudonym: str) -> "Credential":
        """A credential for a device of this process (simulator, demo, tests): no enrolment
        round trip, no first-come check."""
        return Credential(pseudonym, self.key(pseudonym), self.kid)

    def enrol(self, pseudonym: str, now_s: float, vouched: bool = False) -> "Credential":
        """Enrol ``pseudonym`` (1-64 characters) and issue its credential; ValueError if it
        was enrolled before (or is not a usable pseudonym). ``vouched``: enrolled by an
        operator, trusted from now on (see :meth:`is_new`)."""
        if not isinstance(pseudonym, str) or not 1 <= len(pseudonym) <= 64:
            raise ValueError("a pseudonym is 1-64 characters")
        if pseudonym in self.enrolled:
            raise ValueError(f"pseudonym {pseudonym!r} is enrolled already (pseudonyms are first come)")
        if len(self.enrolled) >= self.max_enrolled:
            # pseudonyms are daily: the oldest quarter are days old. Never a young one: a
            # forgotten enrolment would count as established (and be enrolled again by
            # whoever knows it), so a flood of junk enrolments must not push fakes out
            old = list(self.enrolled.items())[: self.max_enrolled // 4]
            if any(now_s - t < PROTECT_ENROLMENT_S for _, t in old):
                # a flood: young ones go too (refusing would deny enrolment to every phone at
                # midnight), and unknown pseudonyms count as new for a while (is_new)
                self.forgot_young_s = now_s
            for k, _ in old:
                del self.enrolled[k]
                self.vouched.discard(k)
        self.enrolled[pseudonym] = now_s
        if vouched:
            self.vouched.add(pseudonym)
        self._log(["e", pseudonym, now_s, bool(vouched)])
        return self.credential(pseudonym)

    def set_grace(self, until_s: float) -> None:
        self.grace_until_s = until_s
        self._log(["g", until_s])
        self.flush_log()

    def _log(self, rec: list) -> None:
        if self.log_path is not None:
            self._pending.append(rec)

    def flush_log(self) -> None:
        """Append the changes since the last call to the log, synced to disk (a blocking
        write: call it from a worker thread on the event loop's behalf)."""
        if self.log_path is None:
            return
        with self._log_lock:  # one writer; records added meanwhile wait for the next call
            batch, self._pending = self._pending, []
            if not batch:
                return
            data = b"".join(len(b).to_bytes(4, "big") + b for b in map(msgspec.msgpack.encode, batch))
            try:
                fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                self._pending[:0] = batch  # written again next time (replay is idempotent)
                raise

    def _replay_log(self) -> int:
        """Apply the log's records (after a load); returns how many. A record cut short
        by a crash mid-write ends the replay."""
        if self.log_path is None or not self.log_path.exists():
            return 0
        raw = self.log_path.read_bytes()
        i = n = 0
        while i + 4 <= len(raw):
            size = int.from_bytes(raw[i:i + 4], "big")
            if i + 4 + size > len(raw):
                break
            try:
                rec = msgspec.msgpack.decode(raw[i + 4:i + 4 + size])
            except msgspec.DecodeError:
                break  # a torn write; load() folds the good part into the file at once
            i += 4 + size
            n += 1
            kind = rec[0]
            if kind == "e":
                self.enrolled[rec[1]] = rec[2]
                if rec[3]:
                    self.vouched.add(rec[1])
            elif kind == "g":
                self.grace_until_s = rec[1]
            elif kind == "a":
                self.tokens.accounts[rec[1]] = rec[2]
            elif kind == "t":
                self.tokens.issued[rec[1]] = rec[2]
        return n

    def is_new(self, pseudonym: str, t_s: float, new_for_s: float) -> bool:
        """Whether ``pseudonym`` enrolled itself less than ``new_for_s`` before ``t_s``
        (UNIX s). Credentials of this server's own processes (replays, the simulator) and
        pseudonyms an operator vouched for are never new; neither is one enrolled so long
        ago that retention forgot the enrolment (older than any ``new_for_s`` in use)."""
        at = self.enrolled.get(pseudonym)
        if at is None:
            # forgotten to make room in a flood of enrolments: maybe a fake's, so new for a while
            return t_s - self.forgot_young_s < new_for_s
        return at >= self.grace_until_s and t_s - at < new_for_s and pseudonym not in self.vouched

    def forget_before(self, t_s: float) -> int:
        """Drop enrolments older than ``t_s`` (server s); returns how many."""
        old = [k for k, t in self.enrolled.items() if t < t_s]
        for k in old:
            del self.enrolled[k]
            self.vouched.discard(k)
        if old and self.path is not None:
            self.save(self.path)  # the log and the file must not keep what retention dropped
        return len(old)

    # -- state that must survive a restart: without the master every device's credential
    #    is gone; without the enrolled set a known pseudonym could be enrolled again
    def save(self, path: str | Path) -> None:
        p = Path(path)
        tmp = p.with_suffix(p.suffix + ".tmp")
        # created 0600, never readable by others even for an instant (the master signs for every device)
        with self._log_lock:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(msgspec.msgpack.encode({"master": self.master, "enrolled": self.enrolled,
                                                "vouched": sorted(self.vouched), "token_keys": self.tokens.pems(),
                                                "grace_until_s": self.grace_until_s,
                                                "forgot_young_s": self.forgot_young_s,
                                                "accounts": self.tokens.accounts, "issued": self.tokens.issued}))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)  # an older file of that name kept its mode through O_TRUNC
            tmp.replace(p)
            dfd = os.open(p.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)  # the rename is on disk before the log goes
            finally:
                os.close(dfd)
            # everything is in the file now: the log starts again
            self._pending.clear()
            log = p.with_name(p.name + ".log")
            if log.exists():
                log.unlink()

    @classmethod
    def load(cls, path: str | Path) -> "Issuer":
        """The issuer saved at ``path``, or a new one (saved there) if there is none."""
        p = Path(path)
        if not p.exists():
            iss = cls()  # fresh: see grace_until_s
            iss.tokens.public_keys()  # the token keys too, on disk before any token is signed
            iss.save(p)
            iss.log_path, iss.path = p.with_name(p.name + ".log"), p
            return iss
        d = msgspec.msgpack.decode(p.read_bytes())
        iss = cls(d["master"])
        iss.enrolled = dict(d.get("enrolled", {}))
        iss.vouched = set(d.get("vouched", ())) & iss.enrolled.keys()
        iss.grace_until_s = float(d.get("grace_until_s", -math.inf))
        iss.tokens = TokenIssuer(iss.master, d.get("token_keys"))
        iss.tokens.accounts = dict(d.get("accounts", {}))
        iss.tokens.issued = dict(d.get("issued", {}))
        iss.forgot_young_s = float(d.get("forgot_young_s", -math.inf))
        iss.tokens.log = iss._log
        iss.log_path, iss.path = p.with_name(p.name + ".log"), p
        had_keys = len(iss.tokens.pems()) == 2
        iss.tokens.public_keys()
        if iss._replay_log() or not had_keys or iss.log_path.exists():
            iss.save(p)  # fold the log (and any torn tail) into the file before appending to it
        return iss


_LOCAL: Issuer | None = None


def local_issuer() -> Issuer:
    """This process's issuer (made on first use): what a :class:`~yujing.service.Service`
    trusts unless given another, and what the simulator's wire feed signs with."""
    global _LOCAL
    if _LOCAL is None:
        _LOCAL = Issuer()
        _LOCAL.fresh = False  # the process's own traffic is never enrolled: no grace to give
    return _LOCAL


class Credential(msgspec.Struct, frozen=True):
    """What a device holds: its pseudonym, its 32-byte key, the issuer's key id."""

    device: str
    key: bytes
    kid: bytes


# ------------------------------------------------------------------------------ signing


def sign(cred: Credential, topic: str, msg) -> bytes:
    """The wire bytes of ``msg`` (a :mod:`yujing.protocol` message of ``cred.device``,
    with its ``seq`` set) signed for ``topic``."""
    body = protocol.encode(msgspec.structs.replace(msg, sig=cred.kid + _ZERO_TAG))[:-TAG_LEN]
    return body + mac(cred.key, topic.replace(".", "/").encode() + b"\x00" + body)


class Signer:
    """Signs the messages of many devices, numbering each device's messages (``seq`` from
    1). Credentials come from ``creds`` (pseudonym -> :class:`Credential`, e.g. enrolled
    over the API) or are made by ``issuer`` (default, when no ``creds`` are given: this
    process's); a device with neither sends unsigned."""

    def __init__(self, issuer: Issuer | None = None, creds: dict[str, Credential] | None = None):
        self.issuer = issuer if issuer is not None else (local_issuer() if creds is None else None)
        self.creds: dict[str, Credential] = dict(creds or {})
        self.seq: dict[str, int] = {}

    def payload(self, topic: str, msg) -> bytes:
        """The wire bytes of ``msg`` for ``topic``, numbered next for its device."""
        dev = msg.device
        c = self.creds.get(dev)
        if c is None and self.issuer is not None:
            c = self.creds[dev] = self.issuer.credential(dev)
        n = self.seq[dev] = self.seq.get(dev, 0) + 1
        msg = msgspec.structs.replace(msg, seq=n)
        return sign(c, topic, msg) if c is not None else protocol.encode(msg)

    def wire(self, kind: str, msg) -> tuple[str, bytes]:
        """(topic, payload) of ``msg``, a message of ``kind``."""
        topic = protocol.topic_for(kind, msg.cell)
        return topic, self.payload(topic, msg)


# ------------------------------------------------------------------------------ checking


class _Cred:
    """Per-credential state at the server: key (cached), replay window, trigger buckets."""

    __slots__ = ("key", "hw", "mask", "tokens", "onsets", "t_s", "refused_onset")

    def __init__(self, key: bytes | None, t_s: float):
        self.key = key
        self.hw = 0  # highest seq seen
        self.mask = 0  # bit i: seq hw-1-i seen
        self.tokens = TRIGGER_BURST
        self.onsets = ONSET_BURST
        self.t_s = t_s  # when the buckets were last filled, server s
        self.refused_onset = math.nan  # onset_s whose updates are dropped with it


class GuardConfig(msgspec.Struct, frozen=True, kw_only=True):
    """``allow_unsigned``: accept messages without a signature (a development server only;
    a served network refuses them). ``rate_limits``: throttle triggers per credential and
    per cell. ``max_credentials``: state kept for at most this many (the oldest quarter is
    forgotten beyond it: their replay windows start again, see docs/security.md)."""

    allow_unsigned: bool = False
    rate_limits: bool = True
    max_credentials: int = 5_000_000
    # the per-cell onset limit holds for new devices only (self-enrolled within this many
    # seconds: Settings.associate.new_device_s): a strong quake under a city makes
    # thousands of a cell's established phones trigger within seconds, and their onsets
    # must reach the engine; each of them is still held by its own credential's limits
    new_device_s: float = 6 * 3600.0


class Guard:
    """The service's door: signature, replay window and trigger rate limits of each decoded
    message, in arrival order. :meth:`check` raises :class:`~yujing.protocol.ProtocolError`
    with the reason to count."""

    def __init__(self, issuer: Issuer | None = None, config: GuardConfig | None = None):
        self.issuer = issuer or local_issuer()
        self.config = config or GuardConfig()
        self.creds: dict[str, _Cred] = {}
        self.cells: dict[str, list[float]] = {}  # cell -> [tokens, filled at s]
        self.unsigned_accepted = 0
        self._topics: dict[str, bytes] = {}
        self._kid = self.issuer.kid
        self._tail = SIG_TAIL + self._kid
        assert len(self._tail) == 10 and SIG_LEN + len(SIG_TAIL) == 26 and TAG_LEN == 16  # the constants inlined in check()
        self._unsigned_ok = self.config.allow_unsigned
        self._rate_limits = self.config.rate_limits

    def check(self, topic: str, payload: bytes, msg, arrival_s: float) -> None:
        """Admit ``msg`` (decoded from ``payload`` on ``topic``) or raise ProtocolError."""
        # the hot path of every message (~40,000/s on one core): lookups kept local
        c = self.creds.get(msg.device)
        if c is None:
            c = self._new_state(msg.device, arrival_s)
        if msg.sig:
            if payload[-26:-16] != self._tail:  # SIG_TAIL + kid: the sig is last, ours
                self._bad_sig(topic, payload, msg)
            key = c.key
            if key is None:
                key = c.key = self.issuer.key(msg.device)
            tb = self._topics.get(topic)
            if tb is None:
                tb = self._topic_bytes(topic)
            if not hmac.compare_digest(_blake2b(tb + payload[:-16], key=key, digest_size=16).digest(), payload[-16:]):
                raise ProtocolError("bad_signature", f"message from {msg.device!r} on {topic}: signature does not verify")
            self._window(c, msg)
        elif self._unsigned_ok:
            self.unsigned_accepted += 1
        else:
            raise ProtocolError("unsigned", f"message from {msg.device!r} on {topic} carries no signature")
        if self._rate_limits and type(msg) is _TriggerMsg:
            self._rate(c, msg, arrival_s)

    def check_batch(self, topics, payloads, msgs, arrivals) -> list:
        """:meth:`check` of many decoded messages, in arrival order: per message None
        (admitted) or the :class:`~yujing.protocol.ProtocolError` refusing it. An entry of
        ``msgs`` that is already a ProtocolError (refused by the decoder) is passed
        through. Each message's tag is still its own keyed BLAKE2b (hashlib has no batch
        form, and a tag per message is what lets a bad one refuse only itself); what the
        batch saves is the call and lookup overhead around it."""
        out: list = []
        append = out.append
        check = self.check
        creds, topics_memo, tail, window = self.creds, self._topics, self._tail, self._window
        trig_t, rate_limits, compare = _TriggerMsg, self._rate_limits, hmac.compare_digest
        for topic, payload, msg, arr in zip(topics, payloads, msgs, arrivals):
            if isinstance(msg, ProtocolError):
                append(msg)
                continue
            try:
                c = creds.get(msg.device)
                tb = topics_memo.get(topic)
                if c is None or c.key is None or tb is None or not msg.sig or payload[-26:-16] != tail:
                    check(topic, payload, msg, arr)  # the first message of a device, or not signed by us
                else:
                    # check() of a known device's signed message, inline
                    if not compare(_blake2b(tb + payload[:-16], key=c.key, digest_size=16).digest(), payload[-16:]):
                        raise ProtocolError("bad_signature", f"message from {msg.device!r} on {topic}: signature does not verify")
                    window(c, msg)
                    if rate_limits and type(msg) is trig_t:
                        self._rate(c, msg, arr)
                append(None)
            except ProtocolError as exc:
                append(exc)
            except Exception as exc:  # a bug here refuses one message, never the batch
                append(ProtocolError("decode_error", f"topic {topic}: {type(exc).__name__}: {exc}"))
        return out

    def _new_state(self, device: str, t_s: float) -> _Cred:
        if len(self.creds) >= self.config.max_credentials:
            for k in list(self.creds)[: self.config.max_credentials // 4]:
                del self.creds[k]
        c = self.creds[device] = _Cred(None, t_s)
        return c

    def _topic_bytes(self, topic: str) -> bytes:
        if len(self._topics) >= 100_000:
            self._topics.clear()
        # the MAC covers the MQTT spelling: NATS delivers the same topic as yj.v1.<kind>.<cell>
        tb = self._topics[topic] = topic.replace(".", "/").encode() + b"\x00"
        return tb

    def _bad_sig(self, topic: str, payload: bytes, msg) -> None:
        sig = msg.sig
        if len(sig) != SIG_LEN or payload[-SIG_LEN - len(SIG_TAIL):-SIG_LEN] != SIG_TAIL:
            raise ProtocolError("bad_signature", f"message from {msg.device!r} on {topic}: sig must be the last field, {SIG_LEN} bytes")
        raise ProtocolError("unknown_credential", f"message from {msg.device!r}: signed under key id {sig[:KID_LEN].hex()}, "
                            f"not this server's ({self._kid.hex()}): enrol again")

    def _window(self, c: _Cred, msg) -> None:
        seq = msg.seq
        hw = c.hw
        if seq > hw:
            d = seq - hw
            c.mask = ((c.mask << d) | (1 << (d - 1))) & _WINDOW_MASK if d <= SEQ_WINDOW else 0
            c.hw = seq
            return
        d = hw - seq
        if seq < 1 or d > SEQ_WINDOW:
            raise ProtocolError("seq_too_old", f"message from {msg.device!r}: seq {seq} is older than the window ({hw} - {SEQ_WINDOW})")
        if d == 0 or c.mask >> (d - 1) & 1:
            raise ProtocolError("replayed", f"message from {msg.device!r}: seq {seq} seen before")
        c.mask |= 1 << (d - 1)

    def _rate(self, c: _Cred, msg, t_s: float) -> None:
        dt = t_s - c.t_s
        if dt > 0:
            c.tokens = min(TRIGGER_BURST, c.tokens + dt * TRIGGER_RATE_PER_S)
            c.onsets = min(ONSET_BURST, c.onsets + dt * ONSET_RATE_PER_S)
            c.t_s = t_s
        if msg.update > 0 and msg.onset_s == c.refused_onset:
            raise ProtocolError("rate_limited_device", f"trigger update from {msg.device!r}: its onset was refused")
        if c.tokens < 1.0 or (msg.update == 0 and c.onsets < 1.0):
            if msg.update == 0:
                c.refused_onset = msg.onset_s
            raise ProtocolError("rate_limited_device", f"triggers from {msg.device!r} above {TRIGGER_RATE_PER_S * 60:.0f}/min "
                                f"or onsets above {ONSET_RATE_PER_S * 3600:.0f}/h")
        if msg.update == 0 and self.issuer.is_new(msg.device, t_s, self.config.new_device_s):
            b = self.cells.get(msg.cell)
            if b is None:
                if len(self.cells) >= 1_000_000:
                    self.cells.clear()
                b = self.cells[msg.cell] = [CELL_ONSET_BURST, t_s]
            elif t_s > b[1]:
                b[0] = min(CELL_ONSET_BURST, b[0] + (t_s - b[1]) * CELL_ONSET_RATE_PER_S)
                b[1] = t_s
            if b[0] < 1.0:
                c.refused_onset = msg.onset_s
                raise ProtocolError("rate_limited_cell", f"trigger onsets from cell {msg.cell} above "
                                    f"{CELL_ONSET_RATE_PER_S:.0f}/s (burst {CELL_ONSET_BURST:.0f})")
            b[0] -= 1.0
        if msg.update == 0:
            c.onsets -= 1.0
        c.tokens -= 1.0

    def forget(self, device: str) -> None:
        """Drop a device's key cache and buckets but keep its replay window (a deleted
        device's old messages must not become replayable)."""
        c = self.creds.get(device)
        if c is not None:
            c.key = None
            c.refused_onset = math.nan


# ------------------------------------------------------------------------------ data rights

DATA_ACTIONS = ("export", "delete")


def data_proof(cred: Credential, action: str, t_s: float) -> str:
    """The proof (hex) a device sends with a data-rights request: HMAC of the action, its
    pseudonym and the time of the request (UNIX s, whole seconds) under its key."""
    msg = f"{action}\x00{cred.device}\x00{int(t_s)}".encode()
    return _blake2b(msg, key=cred.key, digest_size=32, person=_DATA_PERSON).hexdigest()


def check_data_proof(issuer: Issuer, device: str, action: str, t_s: float, proof: str, now_s: float,
                     used: dict[str, float] | None = None) -> None:
    """ValueError unless ``proof`` shows the holder of ``device``'s key asked for
    ``action`` at ``t_s``, within :data:`PROOF_MAX_AGE_S` of ``now_s`` and (given ``used``,
    proof -> time) not used before."""
    if action not in DATA_ACTIONS:
        raise ValueError(f"action must be one of {DATA_ACTIONS}")
    if not isinstance(t_s, (int, float)) or not math.isfinite(t_s) or abs(now_s - t_s) > PROOF_MAX_AGE_S:
        raise ValueError(f"t_s must be within {PROOF_MAX_AGE_S:.0f} s of the server's clock ({now_s:.0f})")
    want = data_proof(Credential(device, issuer.key(device), issuer.kid), action, t_s)
    if not isinstance(proof, str) or not hmac.compare_digest(want, proof):
        raise ValueError("the proof does not verify for this pseudonym (use today's pseudonym and its credential)")
    if used is not None:
        for k in [k for k, t in used.items() if now_s - t > 2 * PROOF_MAX_AGE_S]:
            del used[k]
        if proof in used:
            raise ValueError("this proof was used already; make a new one")
        used[proof] = now_s
