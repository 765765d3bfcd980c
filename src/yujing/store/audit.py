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
"""

from __future__ import annotations

import hashlib
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
