"""cosim-service: write a service that cosim drives in virtual time (docs/protocol.md is the contract).

    from cosim_service import Service

    class Alarm(Service):
        def advance(self, until_us, events):
            return [{"type": "alarm", "time_us": e["time_us"]} for e in events if e["data"]["value"] > 0.9]

    if __name__ == "__main__":
        Alarm().run()

``cosim_service.wire`` is the canonical JSON encoder and the strict line decoder (cosim's coordinator uses the
same one); ``cosim_service.mqtt`` (the ``mqtt`` extra) an MQTT client that lives in virtual time.
"""

from __future__ import annotations

__version__ = "0.1.0"

PROTOCOL_VERSION = 1  # the version of docs/protocol.md this SDK speaks (before the imports: session.py reads it)

from cosim_service.service import Service, run  # noqa: E402
from cosim_service.session import Event, ProtocolError, Session  # noqa: E402

__all__ = ["PROTOCOL_VERSION", "Event", "ProtocolError", "Service", "Session", "run"]
