"""Whether this machine can reach a host, asked once before a library would retry for a minute or more
(TFDS's downloads, huggingface_hub's): one line at once instead."""
from __future__ import annotations

import socket
import urllib.parse
import urllib.request


def unreachable(host: str, port: int = 443, timeout: float = 5.0) -> str | None:
  """Why ``host`` cannot be reached, or None. Without a proxy: its name must resolve ('Name or service
  not known'). Through a proxy (``https_proxy``, unless ``no_proxy`` names the host): the proxy must accept a
  connection within ``timeout`` seconds (a dead proxy made TFDS retry for minutes: hostile pass 24's PR02), and
  a plain HTTP proxy must answer a CONNECT to ``host`` (one that never answers held TFDS and huggingface_hub for
  minutes: pass 25's NW01, NW02). Other proxies (socks5://, https://) speak other protocols: connecting is all
  that is asked of them."""
  proxy = urllib.request.getproxies().get('https')
  if proxy and not urllib.request.proxy_bypass(host):
    p = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
    try:
      with socket.create_connection((p.hostname or '', p.port or 80), timeout=timeout) as s:
        if p.scheme != 'http':
          return None
        s.sendall(f'CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n'.encode())
        if s.recv(1):  # any answer (a refusal or a 407 included) is the library's to report
          return None
        return f'the proxy {proxy} (closed the connection without an answer)'
    except TimeoutError:
      return f'the proxy {proxy} (no answer within {timeout:g} s)'
    except (OSError, ValueError) as e:
      return f'the proxy {proxy} ({getattr(e, "strerror", None) or e})'
  try:
    socket.getaddrinfo(host, port)
  except OSError as e:
    return e.strerror or str(e)
  return None
