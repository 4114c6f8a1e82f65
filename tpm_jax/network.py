"""Whether this machine can reach a host, asked once before a library would retry for a minute or more
(TFDS's downloads, huggingface_hub's): one line at once instead."""
from __future__ import annotations

import socket
import urllib.parse
import urllib.request


def unreachable(host: str, port: int = 443, timeout: float = 5.0) -> str | None:
  """Why ``host`` cannot be reached, or None. Without a proxy: its name must resolve ('Name or service
  not known'). Through a proxy (``https_proxy``, unless ``no_proxy`` names the host): the proxy must
  accept a connection within ``timeout`` seconds (a dead proxy made TFDS retry for minutes: hostile
  pass 24's PR02)."""
  proxy = urllib.request.getproxies().get('https')
  if proxy and not urllib.request.proxy_bypass(host):
    p = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
    try:
      with socket.create_connection((p.hostname or '', p.port or 80), timeout=timeout):
        return None
    except (OSError, ValueError) as e:
      return f'the proxy {proxy} ({getattr(e, "strerror", None) or e})'
  try:
    socket.getaddrinfo(host, port)
  except OSError as e:
    return e.strerror or str(e)
  return None
