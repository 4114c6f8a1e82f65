"""``python -m tpm_jax.export``: the export command line (``tpm_jax.export.main``). Its own module, so
that running it does not execute the export code a second time (the package's front door imports it).
SIGINT and SIGTERM are taken over first: while JAX and Orbax are imported, one line and exit code 1
(nothing started, nothing written); then ``main`` takes them over for the export itself."""
from tpm_jax.cli import stop_during_start_up

if __name__ == '__main__':
  stop_during_start_up('error: stopped by {signal}; nothing was written', 1)

from tpm_jax.cli import quiet_library_logs  # noqa: E402
from tpm_jax.export import main  # noqa: E402

if __name__ == '__main__':
  quiet_library_logs()  # tpm_jax's messages as the tool's own lines; libraries' log lines left out
  main()
