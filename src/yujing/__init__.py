"""yujing (预警): earthquake early warning from phones and low-cost accelerometers."""

__version__ = "0.1.0"
