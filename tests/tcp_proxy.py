"""A TCP proxy on 127.0.0.1 that tests put in front of a server and cut at will.

Modes:
- forwarding: every byte goes through, both ways;
- cut: open connections are closed and the port stops listening, so clients
  see a dropped connection and then "connection refused";
- hanging: open connections are closed, and new ones are accepted but get
  nothing back, as when a server host stops responding.

`restore()` listens on the same port again, so clients configured with the
proxy's address reconnect without any change.
"""

import contextlib
import socket
import threading
from typing import Literal

Mode = Literal["forwarding", "cut", "hanging"]

# How often the accept loop wakes up to notice that the proxy was cut.
_ACCEPT_POLL_SECONDS = 0.1
_CHUNK = 65536


class TcpProxy:
    """Forward 127.0.0.1:<port> to an upstream address, until cut or hung."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode: Mode = "cut"
        self.accepted = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None

    def start(self) -> "TcpProxy":
        self.restore()
        return self

    def restore(self) -> None:
        """Listen on the proxy's port (the same one after a cut) and forward."""
        with self._lock:
            if self.mode == "hanging":
                self._close_connections()
            self.mode = "forwarding"
            if self._listener is None:
                self._listen()

    def hang(self) -> None:
        """Close open connections, then accept new ones and send nothing back."""
        with self._lock:
            self.mode = "hanging"
            self._close_connections()
            if self._listener is None:
                self._listen()

    def cut(self) -> None:
        """Close open connections and stop listening, so new ones are refused."""
        with self._lock:
            self.mode = "cut"
            self._close_connections()
            listener, self._listener = self._listener, None
            thread, self._accept_thread = self._accept_thread, None
        if listener is not None:
            listener.close()
        if thread is not None:
            thread.join()

    def stop(self) -> None:
        self.cut()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The closed connections of an earlier listener linger in TIME_WAIT on
        # this port; SO_REUSEADDR lets the new listener bind it all the same.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(_ACCEPT_POLL_SECONDS)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), daemon=True
        )
        self._accept_thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _address = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed by cut()
                return
            client.settimeout(None)
            with self._lock:
                self.accepted += 1
                self._connections.add(client)
                mode = self.mode
            if mode == "forwarding":
                threading.Thread(
                    target=self._connect_upstream, args=(client,), daemon=True
                ).start()
            # When hanging, the client connection stays open without a
            # response until the next mode change closes it.

    def _connect_upstream(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            self._discard(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if client not in self._connections:  # cut while connecting
                upstream.close()
                return
            self._connections.add(upstream)
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(
                target=self._pump, args=(source, target), daemon=True
            ).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                target.sendall(data)
        except OSError:
            pass
        # One side ended: end both, as a dropped connection does.
        self._discard(source)
        self._discard(target)

    def _discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)
        _close(sock)

    def _close_connections(self) -> None:
        """Close every open connection. The caller must have acquired the lock."""
        for sock in self._connections:
            _close(sock)
        self._connections.clear()


def _close(sock: socket.socket) -> None:
    # shutdown() wakes a thread blocked in recv() on this socket; close()
    # alone would not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
