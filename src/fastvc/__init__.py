"""fastvc: a real-time voice-conversion server that batches many Seed-VC streams into one forward pass.

The data flow, one module per step:

    server (websockets) -> protocol -> codec -> session (buffers, blocks) -> scheduler -> engine (runner)
      -> model (Seed-VC) -> stream (SOLA stitching) -> session -> codec -> protocol -> server
"""

__version__ = "0.1.0"
