"""HTTP to a live taskhub: half-sent requests, raw responses, who answered, a job's state."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson


def open_request(url: str, body: bytes) -> socket.socket:
    """A connection holding a POST /task whose body lacks its last byte (send it to finish)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = (
        f"POST /task HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:-1])
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < content_length(data):
        chunk = sock.recv(65_536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)


def content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def serving_pid(client: socket.socket, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the server end of ``client``'s open TCP connection, read
    from /proc: tells which process answered, at no cost to the server."""
    server_port, client_port = client.getpeername()[1], client.getsockname()[1]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
            if (local, remote) == (server_port, client_port):
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return pid
    return None


def get_job(url: str, job_id: str) -> dict[str, Any] | None:
    """The job's state from ``GET /task/{id}``, or None on 404."""
    response = httpx.get(f"{url}/task/{job_id}", timeout=10)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()
