"""A TCP relay whose one direction is slow: a store (S3) that takes uploads slower than an
upstream sends, on loopback, where everything is fast."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit

PIECE = 64 * 1024


class SlowLink:
    """Relays connections to ``target`` (an http:// URL), sending what clients send at most
    ``rate`` bytes per second; answers come back at full speed. A context manager."""

    def __init__(self, target: str, rate: float) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = []
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> SlowLink:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, self.rate), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, rate: float | None) -> None:
        try:
            while data := source.recv(PIECE):
                if rate:
                    time.sleep(len(data) / rate)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
