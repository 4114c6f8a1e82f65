"""Command-line helpers shared by train.py and eval.py."""
from __future__ import annotations

import re
import sys


def run(main) -> None:
  """``absl.app.run(main)`` with the flags parsed by ``parse_flags_or_exit`` (once)."""
  from absl import app
  remaining = parse_flags_or_exit()
  app.run(main, flags_parser=lambda _: remaining)


def parse_flags_or_exit(argv=None) -> list[str]:
  """Parse absl flags (and ml_collections ``--config.*`` overrides) up front, so that a bad flag, an
  unknown config field or a bad arg string is one line on stderr and exit code 2, not a traceback."""
  from absl import flags
  argv = list(sys.argv if argv is None else argv)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - absl, ml_collections and our get_config raise many kinds
    print(f'error: {describe_flag_error(e, argv)}', file=sys.stderr, flush=True)
    sys.exit(2)


def describe_flag_error(e: Exception, argv) -> str:
  text = str(e)
  if isinstance(e, AttributeError) or 'Did you mean' in text:
    unknown = re.search(r"'\\?'?(\w+)\\?'?", text)
    suggestion = re.search(r'Did you mean "(\w+)"', text)
    key = unknown.group(1) if unknown else '?'
    arg = next((a.split('=')[0] for a in argv if a.startswith('--config.') and a.split('=')[0].endswith('.' + key)),
               f'--config...{key}')
    hint = f' (did you mean {suggestion.group(1)}?)' if suggestion else ''
    return f'{arg[2:]} is not a known config field{hint}'
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  first = lines[0] if lines else type(e).__name__
  if first.endswith(':'):  # "Error whilst parsing config file:" -> add the innermost cause
    cause = e
    while cause.__cause__ is not None or cause.__context__ is not None:
      cause = cause.__cause__ or cause.__context__
    inner = [l.strip() for l in str(cause).splitlines() if l.strip()]
    first = f'{first} {inner[-1] if inner else type(cause).__name__}'
  return first
