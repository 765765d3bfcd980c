"""The server's garbage-collector pacing (yujing.gcpace)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from yujing.gcpace import GcPacer


class _Node:
    pass


def _cycle():
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_survivors_are_frozen_out_of_full_collections_and_given_back_at_the_full_round():
    """After a freeze, long-lived objects are in the permanent generation (a full
    collection does not walk them); a cycle that was alive at the freeze and dies later is
    reclaimed by the full round, not leaked; stop() unfreezes everything."""
    gc.collect()
    base = gc.get_freeze_count()
    pacer = GcPacer(freeze_s=0.05, full_s=3600.0)
    keep = [_Node() for _ in range(10_000)]  # long-lived rows
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    holder = [a]  # a cycle, alive at the freeze
    dead = weakref.ref(a)
    del a, b

    async def main():
        pacer.start()
        assert gc.get_freeze_count() >= base + len(keep)
        await asyncio.sleep(0.2)  # a few paced freezes
        assert pacer.freezes >= 3
        # a cycle born and dropped between freezes is collected as usual
        young = _cycle()
        gc.collect()
        assert young() is None
        holder.clear()  # the frozen cycle is now garbage: frozen, so kept ...
        gc.collect()
        assert dead() is not None
        found = pacer.full()  # ... until the full round
        assert dead() is None and found >= 2
        await pacer.stop()

    asyncio.run(main())
    assert gc.get_freeze_count() == 0
    assert pacer.full_collections == 1 and pacer.last_full_pause_s >= 0
    del keep


def test_pacer_periods_are_checked():
    with pytest.raises(ValueError, match="freeze_s"):
        GcPacer(freeze_s=0)
    with pytest.raises(ValueError, match="full_s"):
        GcPacer(freeze_s=20, full_s=10)
