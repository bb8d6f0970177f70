"""Unix sockets the Hero way: `$HERO_SOCKET_DIR/hero_aibroker/{rest,web_v1,rpc,ui}.sock`.

The directory is made 0700 and each socket chmod-ed (0660 by default) before anyone can connect.
A socket file nobody answers on is stale and replaced; one that answers belongs to a live broker,
and starting a second one fails with a message that says so.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

SURFACES = ("rest", "web_v1", "rpc", "ui")


class SocketInUse(RuntimeError):
    """Another process answers on the socket path."""


def _alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()


def bind_unix(path: Path, mode: int = 0o660) -> socket.socket:
    """A listening Unix socket at `path`, replacing a stale file, refusing a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketInUse(f"{path} exists and is not a socket; move it away")
        if _alive(path):
            raise SocketInUse(f"another process (an aibroker already running?) answers on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # no window in which the socket is open to others
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise SocketInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
