"""Readers that turn recorded or live sensor data into ``yujing.records.Packet`` streams.

Every reader yields packets in arrival order and reports what it could not use to a
``yujing.rejects.Rejects`` instead of raising, so one bad line never stops a replay.
"""
