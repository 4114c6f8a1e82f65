"""``python -m tpm_jax.data.prepare``: its command line (``tpm_jax.data.prepare.main``). Its own module,
so that running it does not execute tpm_jax.data.prepare a second time (the package's front door
imports it). SIGINT and SIGTERM are taken over first: while TFDS is imported, one line and exit code 1;
then ``main`` takes them over for the preparing itself."""
from tpm_jax.cli import stop_during_start_up

if __name__ == '__main__':
  stop_during_start_up('error: stopped by {signal}; nothing was prepared', 1)

import sys  # noqa: E402

from tpm_jax.cli import quiet_library_logs  # noqa: E402
from tpm_jax.data.prepare import main  # noqa: E402

if __name__ == '__main__':
  quiet_library_logs()  # tpm_jax's messages as the tool's own lines; libraries' log lines (TFDS's) left out
  sys.exit(main())
