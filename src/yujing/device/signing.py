"""The device agent's messages as signed wire messages for a server (the transport edge).

The agent's :class:`~yujing.device.messages.Outbox` holds records; a transport that sends
them to a yujing server turns each into a :mod:`yujing.protocol` message and signs it with
the credential the server issued for the pseudonym (:mod:`yujing.security`): a server
refuses unsigned messages unless it is a development server (docs/security.md).

Credentials come from ``POST /api/enrol`` (one per daily pseudonym, first come): build the
request with :func:`enrol_request`, give the response to :meth:`DeviceSigner.add_enrolment`.
A pseudonym with no credential is sent unsigned, which a production server counts and
refuses as ``unsigned``: the device fails loud rather than sending under someone else's key.
A new UTC day brings a new pseudonym (:func:`yujing.device.messages.utc_day`), to enrol
again. Units: times UNIX s (device clock).
"""

from __future__ import annotations

import json
from typing import Callable

import msgspec

from .. import protocol
from ..security import Credential, Signer, sign
from .messages import PacketMessage, TriggerMessage


def enrol_request(pseudonyms: list[str], tokens: dict[str, dict] | None = None) -> bytes:
    """The JSON body of ``POST /api/enrol`` for ``pseudonyms`` (today's, and tomorrow's
    ahead of midnight), with the daily tokens that vouch for them (pseudonym -> what
    :meth:`TokenAsk.token` returned)."""
    body: dict = {"pseudonyms": list(pseudonyms)}
    if tokens:
        body["tokens"] = dict(tokens)
    return json.dumps(body).encode()


class TokenAsk:
    """One daily token, asked for and turned into what ``POST /api/enrol`` shows beside a
    pseudonym (docs/security.md, *Unlinkable daily tokens*).

    A device with an account (``POST /api/account``: its ``account`` and ``key``) asks the
    day before for a token for tomorrow's pseudonym: :meth:`request` is the JSON body of
    ``POST /api/token``, built on the server's token key (``GET /api/token/keys``, the
    ``est`` key once the account is older than the server's ``new_device_s``, else
    ``new``). The server signs a blinded value and never sees the pseudonym;
    :meth:`token` unblinds its answer. An enrolment with an ``est`` token counts toward
    announcing at once and is not charged to the address's daily enrolments
    (``yujing serve --enrol-per-address``): what phones behind one shared address need.
    Send the token request and the enrolment at different times: the address of both
    could link them."""

    def __init__(self, keys: dict, which: str, account: str, account_key: bytes, day: str, pseudonym: str):
        from .. import tokens

        if which not in ("est", "new"):
            raise ValueError(f"a token key is 'est' or 'new', not {which!r}")
        self.pub = keys[which] if isinstance(keys[which], tokens.PublicKey) else tokens.PublicKey.from_json(keys[which])
        self.which, self.account, self.day, self.pseudonym = which, account, day, pseudonym
        self._blinded = tokens.blind(self.pub, tokens.message(day, pseudonym))
        self._proof = tokens.request_proof(account_key, day, self._blinded.blinded)

    def request(self) -> bytes:
        """The JSON body of ``POST /api/token``."""
        return json.dumps({"account": self.account, "day": self.day, "key": self.which,
                           "blinded": self._blinded.blinded.hex(), "proof": self._proof}).encode()

    def token(self, response: dict) -> dict:
        """The token (for :func:`enrol_request`) from the server's answer to
        :meth:`request` (its JSON, decoded); ValueError if it does not verify."""
        from .. import tokens

        if response.get("key") != self.which:
            raise ValueError(f"the server signed with its {response.get('key')!r} key, asked for {self.which!r}")
        sig = tokens.finalize(self.pub, self._blinded, bytes.fromhex(response["blind_sig"]))
        return {"key": self.which, "day": self.day, "prefix": self._blinded.input[: tokens.PREFIX_LEN].hex(),
                "sig": sig.hex()}


def wire_record(message: TriggerMessage | PacketMessage, sent_s: float):
    """(kind, unsigned :mod:`yujing.protocol` message) of an outbox message sent at
    ``sent_s`` (device clock, UNIX s)."""
    if isinstance(message, TriggerMessage):
        return "trig", protocol.from_trigger(message.trigger, message.cell, sent_s)
    p = message.packet
    return "pkt", protocol.PacketMsg(
        device=p.device_id,
        cell=message.cell,
        device_time_s=p.device_time_s,
        sample_rate_hz=p.sample_rate_hz,
        x_gal=list(p.x_gal),
        y_gal=list(p.y_gal),
        z_gal=list(p.z_gal),
    )


class DeviceSigner:
    """Signs one device's outbox messages with its enrolled credentials and numbers them
    (``seq`` per pseudonym: the milliseconds of the UTC day when sent, or one more than the
    last, for the server's replay window, across restarts of the agent). Never makes a
    credential itself: it holds only what a server issued."""

    def __init__(self, credentials: dict[str, Credential] | None = None):
        self._signer = Signer(creds=dict(credentials or {}))  # creds given: no local issuer

    @property
    def credentials(self) -> dict[str, Credential]:
        return self._signer.creds

    def add_enrolment(self, response: dict) -> list[dict]:
        """Keep the credentials of a ``POST /api/enrol`` response (its JSON, decoded);
        returns the refused pseudonyms with the server's reasons."""
        kid = bytes.fromhex(response["kid"])
        for c in response.get("credentials", []):
            self._signer.creds[c["device"]] = Credential(c["device"], bytes.fromhex(c["key"]), kid)
        return list(response.get("refused", []))

    def wire(self, message: TriggerMessage | PacketMessage, sent_s: float) -> tuple[str, bytes]:
        """(MQTT topic, payload) of an outbox message sent at ``sent_s`` (UNIX s), numbered
        with the pseudonym's next ``seq``: one call per message. A message sent again (no
        PUBACK came before its connection dropped) keeps its ``seq``: :meth:`resign`,
        :meth:`sender`."""
        kind, msg = wire_record(message, sent_s)
        # seq from the milliseconds of the (UTC) day, never below the last one: an agent
        # that restarts goes on above what the server saw (from 1 again, its messages were
        # all refused as replayed or too old for the rest of the pseudonym's day)
        floor = int((sent_s % 86_400.0) * 1000.0)
        if floor - 1 > self._signer.seq.get(msg.device, 0):
            self._signer.seq[msg.device] = floor - 1
        return self._signer.wire(kind, msg)

    def resign(self, topic: str, payload: bytes, sent_s: float) -> bytes:
        """The message ``payload`` (made by :meth:`wire`) stamped as sent at ``sent_s``
        and signed again, with the **same** ``seq``: what a device sends when it sends a
        message again after a reconnect (docs/protocol.md, "Connection"). A server that
        took the first copy refuses this one as ``replayed`` (one message, never taken
        twice); a server that never took the first (killed before journaling it: no
        PUBACK came) takes this one, and its ``sent_s`` says when it was really sent, so
        the wait is not taken for a clock error. A raw packet has no ``sent_s``: its bytes
        come back unchanged."""
        msg = protocol.decode(topic, bytes(payload))
        if hasattr(msg, "sent_s"):
            msg = msgspec.structs.replace(msg, sent_s=sent_s)
        cred = self._signer.creds.get(msg.device)
        if cred is None:
            return protocol.encode(msgspec.structs.replace(msg, sig=b""))  # unsigned, as the first copy
        return sign(cred, topic, msg)

    def sender(self, message: TriggerMessage | PacketMessage, now: Callable[[], float]) -> tuple[str, Callable[[], bytes]]:
        """(MQTT topic, payload function) of an outbox message, for an
        :class:`~yujing.bus.mqtt.MqttClient` made with an outbox and
        ``remake_on_resend=True``: ``client.publish_nowait(*signer.sender(m, time.time),
        qos=1)``. The client calls the function when it writes the message: the first call
        numbers it and signs it as sent at ``now()`` (device clock, UNIX s; :meth:`wire`),
        each later one (the message sent again after a reconnect) signs it again as sent
        at ``now()`` with the same ``seq`` (:meth:`resign`)."""
        topic = protocol.topic_for("trig" if isinstance(message, TriggerMessage) else "pkt", message.cell)
        first: list[bytes] = []

        def make() -> bytes:
            if not first:
                first.append(self.wire(message, now())[1])
                return first[0]
            return self.resign(topic, first[0], now())

        return topic, make
