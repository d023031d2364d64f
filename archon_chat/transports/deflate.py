"""Hypercorn's websocket handshake, declining permessage-deflate.

Hypercorn accepts permessage-deflate whenever a client offers it (browsers and the npm
client always do), and wsproto then keeps a zlib compressor for the connection's life once
a frame has been sent: measured on hypercorn 0.18, 116.8 KiB per idle websocket instead of
22.5 KiB, plus a deflate pass over every frame on the hot path. Socket.IO's reference server
declines the extension by default for the same reasons. Hypercorn has no setting for it,
so :func:`refuse_permessage_deflate` replaces the extension its handshake offers with one
that declines every offer. It affects every websocket hypercorn serves in this process,
and is idempotent.
"""

from __future__ import annotations

from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate

__all__ = ["refuse_permessage_deflate"]


class _DeclinedDeflate(PerMessageDeflate):
    def accept(self, offer: str) -> None:
        return None


def refuse_permessage_deflate() -> None:
    """Make hypercorn's websocket handshakes decline permessage-deflate from now on."""
    setattr(ws_stream, "PerMessageDeflate", _DeclinedDeflate)  # noqa: B010 (no re-export)
