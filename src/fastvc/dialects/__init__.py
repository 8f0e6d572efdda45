"""Wire dialects: each turns one WebSocket connection's framing into a `Session`'s samples and back.

    DIALECTS[path] -> async handler(service, connection)

The native dialect (fast-vc-service compatible JSON + binary audio) serves `/` and `/ws`. Another dialect
(Twilio Media Streams, binary L16, ...) adds a module here and its paths to `DIALECTS`; it reuses
`fastvc.service.Service` for admission, auth and sessions, and `fastvc.codec` for audio.
"""

from __future__ import annotations

from fastvc.dialects.native import serve_native

DIALECTS = {
    "/": serve_native,
    "/ws": serve_native,
}

__all__ = ["DIALECTS"]
