"""Message buses between the service's parts and to devices.

- :mod:`.memory`: the in-process bus (default): subjects with NATS-style wildcards, a
  bounded queue per subscriber so a slow consumer never stalls a publisher.
- :mod:`.mqtt`: the device side: an embedded MQTT broker (zero set-up) or any broker, and
  the link that takes device messages in and puts alerts out.
- :mod:`.nats`: NATS JetStream for the scale-out engine.
"""
