"""``python -m tpm_jax.sweep``: the sweep's command line (``tpm_jax.sweep.main``). SIGINT and SIGTERM are taken
over first: while JAX is imported, one line and exit code 0 (nothing was run or written); then ``main`` takes them
over."""
from tpm_jax.cli import stop_during_start_up

if __name__ == '__main__':  # until main takes the signals over
  stop_during_start_up('stopped by {signal} during start-up: nothing was run or written', 0)

from tpm_jax.cli import exit_process, quiet_library_logs  # noqa: E402
from tpm_jax.sweep.command import main  # noqa: E402

if __name__ == '__main__':
  quiet_library_logs()  # tpm_jax's messages as the tool's own lines; libraries' log lines left out
  exit_process(main())
