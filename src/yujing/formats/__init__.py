"""Standard formats for the outside world: CAP 1.2 alerts, QuakeML 1.2 events, GeoJSON.

Writers only, from the engine's records (``records.Alert``, ``records.EventUpdate``) and
intensity maps; standard library XML, no extra dependency beyond h3 and numpy.
"""

from .cap import alert_to_cap, cap_filename, cap_identifier
from .geojson import events_to_geojson, mmi_color, mmi_to_geojson
from .quakeml import events_to_quakeml

__all__ = [
    "alert_to_cap",
    "cap_filename",
    "cap_identifier",
    "events_to_geojson",
    "events_to_quakeml",
    "mmi_color",
    "mmi_to_geojson",
]
