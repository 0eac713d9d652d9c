"""A small MJPEG-over-HTTP camera on loopback: ``multipart/x-mixed-replace`` JPEG frames, as most IP
cameras serve them. It can be stopped and restarted on the same port, and frozen (connections stay
open but no frame is sent) to simulate a stall."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = "frame"


def _jpegs(width: int, height: int, count: int = 8) -> list[bytes]:
    out = []
    for i in range(count):
        image = np.full((height, width, 3), 40 + 20 * i, np.uint8)
        origin = (width // 3, height * 2 // 3)
        cv2.putText(image, str(i), origin, cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 255), 3)
        ok, data = cv2.imencode(".jpg", image)
        assert ok
        out.append(data.tobytes())
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: _Server

    def do_GET(self) -> None:
        camera = self.server.camera
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        camera.connections += 1
        n = 0
        while not camera.closing.is_set():
            if camera.frozen.is_set():
                camera.closing.wait(0.05)
                continue
            jpeg = camera.jpegs[n % len(camera.jpegs)]
            part = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
            try:
                self.wfile.write(part + jpeg + b"\r\n")
                self.wfile.flush()
            except OSError:
                return
            n += 1
            camera.closing.wait(1 / camera.fps)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    camera: MjpegCamera


class MjpegCamera:
    """Serves ``http://127.0.0.1:<port>/stream.mjpg``; ``port=0`` picks a free port."""

    def __init__(self, port: int = 0, fps: float = 25.0, width: int = 160, height: int = 120) -> None:
        self.fps = fps
        self.jpegs = _jpegs(width, height)
        self.closing = threading.Event()
        self.frozen = threading.Event()
        self.connections = 0
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.camera = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def stop(self) -> None:
        """Close the listening socket and end every stream (clients see the connection close)."""
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MjpegCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closing.is_set():
            self.stop()


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
