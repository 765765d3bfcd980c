"""Stage 4 of the device agent: what leaves the device, and nothing more.

Every message is built here, so this is the one place to read for what a device reveals:

* :class:`TriggerMessage`: a :class:`~yujing.records.Trigger` with ``device_id`` = the
  pseudonym of the UTC day it was sent and ``latitude``/``longitude`` = the centre of the
  device's H3 resolution-7 cell (:data:`CELL_RESOLUTION`), the cell itself and the
  classifier's probability. The pseudonym is :func:`yujing.sources.simulator.daily_pseudonym`
  (keyed BLAKE2b of the UTC date with the device's secret): two days' pseudonyms cannot be
  linked without the secret, which never leaves the device.
* :class:`PacketMessage`: raw samples, only when the owner opted in.

The precise position is never in any message. Messages wait in :attr:`Outbox.queue` for
whatever transport drains it (I/O stays outside); :mod:`yujing.device.signing` signs them
for a server that asks for signed devices.

Units: times UNIX s (device clock), accelerations gal, degrees for the cell centre.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone

import h3
import msgspec
import numpy as np

from ..records import Packet, Trigger
from ..sources.simulator import daily_pseudonym

#: H3 resolution of the cell a device reports (~5 km^2): coarse enough that it does not
#: locate a home, fine enough to place a trigger for the locator.
CELL_RESOLUTION = 7


def utc_day(t_s: float) -> str:
    """The UTC date of UNIX time ``t_s`` as ``YYYY-MM-DD`` (the pseudonym's period)."""
    return datetime.fromtimestamp(t_s, tz=timezone.utc).strftime("%Y-%m-%d")



class TriggerMessage(msgspec.Struct, frozen=True, tag="trigger", tag_field="kind"):
    """A trigger or amplitude update as the device sends it.

    ``trigger.device_id`` is the pseudonym of the UTC day it was sent, ``trigger.latitude``
    and ``trigger.longitude`` the centre of ``cell`` (H3, resolution 7), never the device's
    position. ``classifier_probability``: the classifier's earthquake probability for the
    trigger's window (the same on every update).
    """

    cell: str
    classifier_probability: float
    trigger: Trigger


class PacketMessage(msgspec.Struct, frozen=True, tag="packet", tag_field="kind"):
    """One block of processed samples, sent only when the owner opted in (``share_raw``):
    gal, gravity removed, ``x`` vertical, on the device's uniform grid; ``device_id`` is
    the pseudonym and ``arrival_time_s`` the send time (the server sets its own)."""

    cell: str
    packet: Packet



class Outbox:
    """The messages a device has made and not yet handed to a transport.

    ``latitude``/``longitude``: the device's own position (degrees), used only to find its
    cell; ``secret``: the key of its daily pseudonyms.
    """

    def __init__(self, latitude: float, longitude: float, secret: bytes):
        self.secret = secret
        self.cell = h3.latlng_to_cell(latitude, longitude, CELL_RESOLUTION)
        self.cell_latitude, self.cell_longitude = h3.cell_to_latlng(self.cell)
        self.queue: deque = deque()
        self.trigger_messages = 0
        self.packet_messages = 0

    def pseudonym(self, t_s: float) -> str:
        """The device's pseudonym on the UTC day of ``t_s`` (UNIX s)."""
        return daily_pseudonym(self.secret, utc_day(t_s))

    def drain(self) -> list:
        """Take every waiting message out (for a transport to send)."""
        out = list(self.queue)
        self.queue.clear()
        return out

    def as_sent(self, trig: Trigger, update: int) -> Trigger:
        """The picker's trigger as it may leave the device: pseudonym of the day it is
        issued, cell centre for the position, ``update`` its number among those sent."""
        return msgspec.structs.replace(
            trig,
            device_id=self.pseudonym(trig.issued_at_s),
            latitude=self.cell_latitude,
            longitude=self.cell_longitude,
            update=update,
        )

    def trigger(self, trig: Trigger, update: int, probability: float) -> TriggerMessage:
        """Queue trigger message number ``update`` (0 = the decision) of one trigger."""
        m = TriggerMessage(self.cell, probability, self.as_sent(trig, update))
        self.queue.append(m)
        self.trigger_messages += 1
        return m

    def packet(self, end_s: float, rate_hz: float, rotated: np.ndarray) -> PacketMessage:
        """Queue one raw block (gal, (n, 3), vertical first, the last sample at ``end_s``)."""
        pkt = Packet(
            device_id=self.pseudonym(end_s),
            device_time_s=end_s,
            arrival_time_s=end_s,
            sample_rate_hz=rate_hz,
            x_gal=rotated[:, 0].tolist(),
            y_gal=rotated[:, 1].tolist(),
            z_gal=rotated[:, 2].tolist(),
        )
        m = PacketMessage(self.cell, pkt)
        self.queue.append(m)
        self.packet_messages += 1
        return m
