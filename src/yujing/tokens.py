"""Unlinkable daily tokens: RSA blind signatures (RFC 9474, RSABSSA-SHA384-PSS-Randomized).

A phone enrols a new pseudonym every day. Without tokens the server either trusts every
self-enrolled pseudonym (anyone can enrol thousands of fakes) or links each day's
pseudonym to something lasting (which undoes the pseudonyms). A blind signature gives
both: the phone holds a long-lived *account* (random, made once, no personal data); once a
day it asks the server to sign, blindly, a token naming tomorrow's pseudonym; the server
sees only the blinded value, signs at most one per account per day, and cannot later tell
which account a token came from. At enrolment the phone shows the token: the server
learns "some account of mine vouches for this pseudonym", never which.

Two signing keys carry the one bit the engine needs (``Settings.associate.new_device_s``):
tokens for accounts older than that period are signed with the *established* key, the
others with the *new* key. A pseudonym enrolled with an established token counts toward
announcing an event at once, at midnight too, when every phone's pseudonym changes.
What it costs an attacker: one account per fake, made ``new_device_s`` ahead, and one
token per account per day. Accounts are free to make here; an attestation (Play
Integrity, App Attest) at account creation would price them, and is not built.

The scheme, as RFC 9474 section 4 (variant RSABSSA-SHA384-PSS-Randomized):

- ``prepare``: ``input = 32 random bytes || msg``
- ``blind``: ``m = EMSA-PSS-ENCODE(input)`` (SHA-384, MGF1-SHA-384, 48-byte salt),
  ``blinded = m * r^e mod n`` for a random ``r``
- ``blind_sign`` (server): ``s = blinded^d mod n``, checked ``s^e = blinded``
- ``finalize``: ``sig = s * r^-1 mod n``, a standard RSASSA-PSS signature on ``input``

Verification is plain RSA-PSS, done with ``cryptography`` (which checks the encoding
this module builds). Costs here: key generation ~0.1 s per key (once, kept in the
credentials file), a blind signature ~2 ms with CRT, a verification ~0.1 ms.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
from dataclasses import dataclass
from typing import Callable

#: RSA modulus size, bits (RFC 9474 recommends >= 2048)
MODULUS_BITS = 2048
PREFIX_LEN = 32  # the randomized variant's message prefix
SALT_LEN = 48  # sLen = hLen for SHA-384
_H = hashlib.sha384
_HLEN = 48
TOKEN_PERSON = b"yj-token-v1"
ESTABLISHED, NEW = "est", "new"


def _i2b(x: int, n: int) -> bytes:
    return x.to_bytes(n, "big")


def _b2i(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _mgf1(seed: bytes, length: int) -> bytes:
    out = b""
    c = 0
    while len(out) < length:
        out += _H(seed + c.to_bytes(4, "big")).digest()
        c += 1
    return out[:length]


def emsa_pss_encode(msg: bytes, em_bits: int, salt: bytes) -> bytes:
    """RFC 8017 9.1.1 with SHA-384 and MGF1-SHA-384."""
    em_len = (em_bits + 7) // 8
    if em_len < _HLEN + len(salt) + 2:
        raise ValueError("modulus too small for SHA-384 PSS")
    m_hash = _H(msg).digest()
    h = _H(b"\x00" * 8 + m_hash + salt).digest()
    db = b"\x00" * (em_len - len(salt) - _HLEN - 2) + b"\x01" + salt
    masked = bytes(a ^ b for a, b in zip(db, _mgf1(h, em_len - _HLEN - 1)))
    clear = 8 * em_len - em_bits
    masked = bytes([masked[0] & (0xFF >> clear)]) + masked[1:]
    return masked + h + b"\xbc"


@dataclass(frozen=True)
class PublicKey:
    n: int
    e: int

    @property
    def size(self) -> int:
        """Modulus length, bytes."""
        return (self.n.bit_length() + 7) // 8

    def as_json(self) -> dict:
        return {"n": format(self.n, "x"), "e": self.e}

    @classmethod
    def from_json(cls, d: dict) -> "PublicKey":
        return cls(int(d["n"], 16), int(d["e"]))


def message(day: str, pseudonym: str) -> bytes:
    """What a token says: this pseudonym is a device's for this UTC day (YYYY-MM-DD)."""
    return b"yj-token/v1|" + day.encode() + b"|" + pseudonym.encode()


# ------------------------------------------------------------------------------ the device


@dataclass(frozen=True)
class Blinded:
    """What the device keeps between asking and finalizing (never sent: ``inv``), and
    what it sends (``blinded``)."""

    input: bytes  # prefix || message
    blinded: bytes
    inv: int


def blind(pub: PublicKey, msg: bytes) -> Blinded:
    """RFC 9474 Prepare (randomized) and Blind."""
    inp = secrets.token_bytes(PREFIX_LEN) + msg
    em = emsa_pss_encode(inp, pub.n.bit_length() - 1, secrets.token_bytes(SALT_LEN))
    m = _b2i(em)
    if math.gcd(m, pub.n) != 1:
        raise ValueError("message not invertible modulo n")
    while True:
        r = secrets.randbelow(pub.n - 1) + 1
        if math.gcd(r, pub.n) == 1:
            break
    z = (m * pow(r, pub.e, pub.n)) % pub.n
    return Blinded(inp, _i2b(z, pub.size), pow(r, -1, pub.n))


def finalize(pub: PublicKey, b: Blinded, blind_sig: bytes) -> bytes:
    """RFC 9474 Finalize: the unblinded signature, verified (ValueError if the server
    signed with another key or anything else went wrong)."""
    if len(blind_sig) != pub.size:
        raise ValueError("blind signature of the wrong length")
    sig = _i2b((_b2i(blind_sig) * b.inv) % pub.n, pub.size)
    if not verify(pub, b.input, sig):
        raise ValueError("the finalized signature does not verify: wrong key, or a faulty server")
    return sig


# ------------------------------------------------------------------------------ the server


def verify(pub: PublicKey, inp: bytes, sig: bytes) -> bool:
    """RSASSA-PSS-VERIFY (SHA-384, MGF1-SHA-384, 48-byte salt) of ``inp`` (prefix ||
    message), by ``cryptography``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.RSAPublicNumbers(pub.e, pub.n).public_key()
    try:
        key.verify(sig, inp, padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=SALT_LEN), hashes.SHA384())
    except InvalidSignature:
        return False
    return True


class SigningKey:
    """An RSA private key used only for blind signatures (CRT, checked)."""

    def __init__(self, pem: bytes | None = None):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        if pem is None:
            k = rsa.generate_private_key(public_exponent=65537, key_size=MODULUS_BITS)
            pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        else:
            k = serialization.load_pem_private_key(pem, password=None)
        self.pem = pem
        nums = k.private_numbers()
        self.pub = PublicKey(nums.public_numbers.n, nums.public_numbers.e)
        self._p, self._q = nums.p, nums.q
        self._dp, self._dq, self._qi = nums.dmp1, nums.dmq1, nums.iqmp

    def blind_sign(self, blinded: bytes) -> bytes:
        n = self.pub.n
        if len(blinded) != self.pub.size:
            raise ValueError(f"blinded message must be {self.pub.size} bytes")
        m = _b2i(blinded)
        if not 0 < m < n:
            raise ValueError("blinded message out of range")
        s1 = pow(m % self._p, self._dp, self._p)
        s2 = pow(m % self._q, self._dq, self._q)
        s = s2 + self._q * ((self._qi * (s1 - s2)) % self._p)
        if pow(s, self.pub.e, n) != m:  # a CRT fault would leak the key
            raise ValueError("signature check failed")
        return _i2b(s, self.pub.size)


class TokenIssuer:
    """Accounts, the two signing keys and the one-token-per-account-per-day rule.

    ``accounts``: account id -> created at (server s). ``issued``: account id -> the last
    UTC day a token was signed for. The keys are made on first use (a test server that
    never issues a token pays nothing).

    ``clock``: the server's wall clock (UNIX s) that accounts and tokens go by, when the
    caller's own clock is not it; None (the default): the caller's ``now_s`` is. A
    scale-out worker sets ``time.time``: its API's Service clock is a shard's engine clock
    (0 before the first step, behind while it catches up), and an account opened at 0
    would look decades old to ``sign`` (an ``est`` token at once). The API takes the
    time of data-rights proofs and audit rows from it too (``server_now`` in
    :func:`yujing.api.app.create_app`). See :meth:`now`."""

    def __init__(self, master: bytes, keys: dict[str, bytes] | None = None):
        self._master = master
        self._pem = dict(keys or {})
        self._keys: dict[str, SigningKey] = {}
        self.accounts: dict[str, float] = {}
        self.issued: dict[str, str] = {}
        self.log = None  # records each change (the issuer's durable log), if set
        self.clock: Callable[[], float] | None = None  # the server's wall clock, if not the caller's
        self._lock = threading.Lock()

    def now(self, fallback: Callable[[], float]) -> float:
        """The time (UNIX s) to open accounts, sign and check tokens at (and the API's
        data-rights proofs and audit rows): :attr:`clock` if set, else ``fallback()`` (the
        Service clock, which is the wall clock of a single server, or a test's manual clock)."""
        return self.clock() if self.clock is not None else fallback()

    def key(self, which: str) -> SigningKey:
        k = self._keys.get(which)
        if k is None:
            with self._lock:  # two threads must not make two keys (one would be lost)
                k = self._keys.get(which)
                if k is None:
                    k = SigningKey(self._pem.get(which))
                    self._pem[which] = k.pem
                    self._keys[which] = k
        return k

    def public_keys(self) -> dict[str, PublicKey]:
        return {w: self.key(w).pub for w in (ESTABLISHED, NEW)}

    def pems(self) -> dict[str, bytes]:
        return dict(self._pem)

    def account_key(self, account: str) -> bytes:
        return hashlib.blake2b(account.encode(), key=self._master[:64], digest_size=32, person=TOKEN_PERSON).digest()

    def open_account(self, now_s: float) -> tuple[str, bytes]:
        """A new account: (id, key). The key authenticates its token requests."""
        acct = secrets.token_hex(16)
        self.accounts[acct] = now_s
        if self.log is not None:
            self.log(["a", acct, now_s])
        return acct, self.account_key(acct)

    def sign(self, account: str, day: str, which: str, blinded: bytes, proof: str, now_s: float,
             new_for_s: float) -> bytes:
        """Blind-sign one token for ``account`` for UTC ``day`` (tomorrow, by the server
        clock) with key ``which`` (the device blinded with that key's modulus: it
        asks for ``est`` once its account is ``new_for_s`` old); returns the blind
        signature. ValueError with the reason otherwise: unknown account, bad proof, a
        second token for that day, an ``est`` token for a young account."""
        created = self.accounts.get(account)
        if created is None:
            raise ValueError("unknown account: open one with POST /api/account")
        want = request_proof(self.account_key(account), day, blinded)
        if not isinstance(proof, str) or not hmac.compare_digest(want, proof):
            raise ValueError("the proof does not verify for this account")
        if day != utc_day(now_s + 86_400.0):
            # tomorrow's only: one token per account per day, asked the day before (a token
            # for today would also single out the few accounts that asked for one)
            raise ValueError(f"tokens are for tomorrow (UTC, {utc_day(now_s + 86_400.0)}), not {day!r}")
        if which not in (ESTABLISHED, NEW):
            raise ValueError("key must be 'est' or 'new'")
        if which == ESTABLISHED and now_s - created < new_for_s:
            raise ValueError(f"the account is {now_s - created:.0f} s old: 'est' tokens from {new_for_s:.0f} s on; "
                             "ask for 'new'")
        with self._lock:  # the check and the mark together: parallel requests get one token
            prev = self.issued.get(account, "")
            if prev >= day:
                raise ValueError(f"this account has its token for {day} (one per day)")
            self.issued[account] = day
        try:
            sig = self.key(which).blind_sign(blinded)
        except ValueError:
            with self._lock:
                if prev:
                    self.issued[account] = prev
                else:
                    self.issued.pop(account, None)
            raise
        # not in the durable log: its order there would put this account next to the
        # pseudonym it enrols; kept in the snapshot only (a crash allows a second token)
        return sig

    def check(self, which: str, day: str, pseudonym: str, inp_prefix: bytes, sig: bytes, now_s: float) -> None:
        """ValueError unless ``sig`` is a token of key ``which`` for ``pseudonym`` on
        ``day`` (today or tomorrow)."""
        if which not in (ESTABLISHED, NEW):
            raise ValueError("token key must be 'est' or 'new'")
        if day not in (utc_day(now_s), utc_day(now_s + 86_400.0)):
            raise ValueError(f"the token is for {day!r}, not today or tomorrow (UTC)")
        if len(inp_prefix) != PREFIX_LEN:
            raise ValueError(f"token prefix must be {PREFIX_LEN} bytes")
        if not verify(self.key(which).pub, inp_prefix + message(day, pseudonym), sig):
            raise ValueError("the token does not verify for this pseudonym and day")


def request_proof(account_key: bytes, day: str, blinded: bytes) -> str:
    """The device's proof that it holds the account's key, for one token request (hex)."""
    return hashlib.blake2b(day.encode() + b"\x00" + blinded, key=account_key, digest_size=32,
                           person=TOKEN_PERSON).hexdigest()


def utc_day(t_s: float) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(t_s, tz=_dt.timezone.utc).strftime("%Y-%m-%d")
