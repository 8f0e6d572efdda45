"""Wire dialects: each turns one WebSocket connection's framing into a `Session`'s samples and back.

    DIALECTS[path] -> async handler(service, connection)

The native dialect (fast-vc-service compatible JSON + binary audio) serves `/` and `/ws`. Another dialect
(Twilio Media Streams, binary L16, ...) adds a module here and its paths to `DIALECTS`; it reuses
`fastvc.service.Service` for admission, auth and sessions, and `fastvc.codec` for audio.
"""

from __future__ import annotations

from fastvc.dialects.l16 import serve_l16
from fastvc.dialects.root import serve_root
from fastvc.dialects.twilio import serve_twilio

DIALECTS = {
    "/": serve_root,  # native, or fast-vc-service's simple protocol, picked by the first message
    "/ws": serve_root,
    "/twilio": serve_twilio,  # Twilio Media Streams (bidirectional)
    "/l16": serve_l16,  # raw 16-bit PCM, format in the query string
}

__all__ = ["DIALECTS"]
