"""The audit chain's hash: one exact byte layout, so anyone can re-check a log.

Each row's hash is SHA-256 over::

    b"yujing-audit-v1"
    || frame(prev_hash)   32 bytes: the previous row's hash (GENESIS_HASH for seq 1)
    || frame(seq)         8 bytes: signed 64-bit big-endian integer
    || frame(at_s)        8 bytes: IEEE-754 binary64 big-endian (UNIX seconds)
    || frame(actor) || frame(action) || frame(target) || frame(purpose)   UTF-8

where ``frame(b) = len(b) as 4-byte unsigned big-endian || b``. Length prefixes make the
split between fields unambiguous; binary numbers avoid any float-formatting question. Hashes
are stored and returned as 64 lowercase hex digits.

Device pseudonyms never enter the log in the clear: :func:`subject_tag` replaces each with
a keyed tag (crypto-shredding; see docs/privacy.md). The chain covers the tags, so deleting
a tag's key later changes no row and breaks no hash.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct

DOMAIN = b"yujing-audit-v1"
GENESIS_HASH = "0" * 64


def _frame(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def row_hash(prev_hash: str, seq: int, at_s: float, actor: str, action: str, target: str,
             purpose: str) -> str:
    """The hash of one audit row (see the module docstring for the layout)."""
    parts = [
        DOMAIN,
        _frame(bytes.fromhex(prev_hash)),
        _frame(struct.pack(">q", seq)),
        _frame(struct.pack(">d", at_s)),
    ]
    parts += [_frame(s.encode("utf-8")) for s in (actor, action, target, purpose)]
    return hashlib.sha256(b"".join(parts)).hexdigest()


def check_fields(at_s: float, **texts: str) -> float:
    """``at_s`` as it will be hashed and stored; ValueError for what a back end would
    change or refuse (PostgreSQL text cannot hold NUL; -0.0 might come back as 0.0)."""
    at_s = float(at_s)
    if not math.isfinite(at_s):
        raise ValueError(f"audit at_s must be a finite UNIX time in seconds, not {at_s}")
    for name, value in texts.items():
        if not isinstance(value, str):
            raise ValueError(f"audit {name} must be a string, not {type(value).__name__}")
        if "\x00" in value:
            raise ValueError(f"audit {name} {value!r} contains a NUL character")
    return at_s + 0.0  # -0.0 -> 0.0


#: Seconds of audit time that share one tag key (a key is deleted once its whole period is
#: older than the retention period, so a tag stays linkable at most this long beyond it).
SUBJECT_KEY_PERIOD_S = 3600
#: How a tag starts in ``actor``, ``target`` or ``purpose``.
TAG_PREFIX = "dev#"
#: Actions whose ``target`` is a device pseudonym (the API's audited device reads and a
#: device's own data-rights requests); an ``actor`` ``device:<pseudonym>`` is one too.
DEVICE_TARGET_ACTIONS = frozenset({"read_device", "device_export", "device_delete"})
DEVICE_ACTOR_PREFIX = "device:"
#: Subjects shorter than this are not searched for inside ``purpose`` (free text): a
#: one-letter test pseudonym would otherwise rewrite ordinary words.
MIN_SUBJECT_IN_TEXT = 6


def key_period(at_s: float) -> int:
    """The tag-key period of an audit time (UNIX s): ``floor(at_s / 3600)``."""
    return math.floor(at_s / SUBJECT_KEY_PERIOD_S)


def subject_tag(key_hex: str, subject: str) -> str:
    """``dev#`` + the first 128 bits (hex) of HMAC-SHA256(key, subject): stable within one
    key period (so an operator can still find every read of one pseudonym while the key
    lives), unlinkable to the pseudonym once the key is deleted."""
    mac = hmac.new(bytes.fromhex(key_hex), subject.encode("utf-8"), hashlib.sha256).hexdigest()
    return TAG_PREFIX + mac[:32]


def personal_subjects(actor: str, action: str, target: str) -> list[str]:
    """The built-in rule for which audit fields name a device (used when the caller does
    not list the subjects): the target of :data:`DEVICE_TARGET_ACTIONS`, the name after
    ``device:`` in the actor."""
    out = []
    if action in DEVICE_TARGET_ACTIONS and target:
        out.append(target)
    if actor.startswith(DEVICE_ACTOR_PREFIX) and len(actor) > len(DEVICE_ACTOR_PREFIX):
        out.append(actor[len(DEVICE_ACTOR_PREFIX):])
    return out


def pseudonymise(actor: str, target: str, purpose: str, tags: dict[str, str]) -> tuple[str, str, str]:
    """``actor``, ``target``, ``purpose`` with every subject in ``tags`` (subject -> tag)
    replaced: a whole field equal to a subject, ``device:<subject>`` in the actor, and, for
    subjects of at least MIN_SUBJECT_IN_TEXT characters, any occurrence in the text. Longer
    subjects first, so one that contains another is replaced whole."""
    for s in sorted(tags, key=len, reverse=True):
        t = tags[s]
        if target == s:
            target = t
        if actor == s:
            actor = t
        elif actor == DEVICE_ACTOR_PREFIX + s:
            actor = DEVICE_ACTOR_PREFIX + t
        if len(s) >= MIN_SUBJECT_IN_TEXT:
            actor, target, purpose = (f.replace(s, t) for f in (actor, target, purpose))
    return actor, target, purpose
