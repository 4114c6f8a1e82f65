"""``python -m tpm_jax.export``: the export command line (``tpm_jax.export.main``). Its own module, so
that running it does not execute tpm_jax.export a second time (the package's front door imports it)."""
from tpm_jax.cli import quiet_library_logs
from tpm_jax.export import main

if __name__ == '__main__':
  quiet_library_logs()  # tpm_jax's messages as the tool's own lines; libraries' log lines left out
  main()
