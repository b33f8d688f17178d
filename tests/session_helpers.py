"""Helpers of the tests that start processes: a free local port, and work done once per test session."""
import contextlib
import fcntl
import os
import pathlib
import socket
from typing import Iterator


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def once_per_session(tmp_path_factory, name: str) -> Iterator[pathlib.Path]:
  """A folder shared by every pytest-xdist worker of the session, held under a file lock: the first worker does
  the expensive work in it, the others find it done."""
  base = tmp_path_factory.getbasetemp()
  root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
  root.mkdir(exist_ok=True)
  with open(root / "lock", "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield root
