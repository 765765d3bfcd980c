"""The device side: what runs on a phone or a sensor gateway (trigger classifier, agent)."""
