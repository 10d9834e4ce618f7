"""The receiver's TLS port: the same AE, handlers and rules as the plain port, behind TLS.

pynetdicom's server wraps each accepted socket in its accept loop, so one peer that
connects and never finishes (or botches) its handshake would stall or silently lose every
other connection. Here the handshake runs on the connection's own thread with a time
limit; a failed one is logged, recorded as a refused association and closed, and the
listener carries on.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from magickbox.config import Settings
from magickbox.errors import Invalid
from magickbox.receive.rejections import Rejection
from magickbox.tls import server_context

log = logging.getLogger(__name__)

HANDSHAKE_SECONDS = 30.0  # a peer slower than this is refused


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The TLS port's context from the settings; Invalid names what is missing or wrong."""
    if not (settings.dicom_tls_cert and settings.dicom_tls_key):
        raise Invalid("dicom_tls_port is set: dicom_tls_cert and dicom_tls_key are needed too")
    ca = settings.home_path(settings.dicom_tls_ca) if settings.dicom_tls_ca else None
    cert = settings.home_path(settings.dicom_tls_cert)
    return server_context(cert, settings.home_path(settings.dicom_tls_key), ca)


class TlsAssociationServer(ThreadedAssociationServer):
    """A threaded association server doing each TLS handshake on the connection's thread."""

    on_failed: Callable[[Rejection], None] = staticmethod(lambda _r: None)  # type: ignore[assignment]

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        return self.socket.accept()  # plain: the handshake is process_request_thread's

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        tls = self._handshake(request, client_address)
        if tls is not None:
            super().process_request_thread(tls, client_address)

    def _handshake(self, raw: socket.socket, peer: tuple[str, int]) -> ssl.SSLSocket | None:
        assert self.ssl_context is not None
        raw.settimeout(HANDSHAKE_SECONDS)
        try:
            tls = self.ssl_context.wrap_socket(raw, server_side=True)
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            with contextlib.suppress(OSError):
                raw.close()
            reason = f"TLS handshake failed: {exc}"
            log.warning("refused a TLS connection from %s: %s", peer[0], reason)
            self.on_failed(Rejection("", "", str(peer[0]), self.server_address[1], reason))
            return None
        tls.settimeout(None)  # as pynetdicom expects of an accepted socket
        return tls

    def shutdown(self) -> None:
        # pynetdicom's shutdown also drops the server from its AE's list of servers it
        # started itself, which this one is not on (ae.make_server built it).
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def start_tls_server(
    ae: AE, settings: Settings, handlers: list[Any], on_failed: Callable[[Rejection], None]
) -> ThreadedAssociationServer:
    """Listen on ``dicom_tls_port`` with ``ae``'s contexts and ``handlers``, in a thread."""
    server = ae.make_server(
        (settings.host, settings.dicom_tls_port),
        ssl_context=tls_context(settings),
        evt_handlers=handlers,
        server_class=TlsAssociationServer,
    )
    server.on_failed = on_failed  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="dicom-tls", daemon=True).start()
    log.info("DICOM receiver listening with TLS on port %d", settings.dicom_tls_port)
    return server
