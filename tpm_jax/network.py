"""Whether this machine can reach a host, asked once before a library would retry for a minute or more
(TFDS's downloads, huggingface_hub's): one line at once instead."""
from __future__ import annotations

import socket
import urllib.request


def unreachable(host: str, port: int = 443) -> str | None:
  """Why ``host`` cannot be reached ('Name or service not known'), or None when its name resolves or a
  proxy is set (the proxy resolves the names)."""
  if urllib.request.getproxies():
    return None
  try:
    socket.getaddrinfo(host, port)
  except OSError as e:
    return e.strerror or str(e)
  return None
