"""``python -m tpm_jax.data.prepare``: its command line (``tpm_jax.data.prepare.main``). Its own module,
so that running it does not execute tpm_jax.data.prepare a second time (the package's front door
imports it)."""
import sys

from tpm_jax.data.prepare import main

if __name__ == '__main__':
  sys.exit(main())
