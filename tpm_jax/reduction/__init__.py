"""Token-reduction methods: pure functions with one signature (see ``common``), one file each."""
from tpm_jax.reduction import drop, evit, tome, tpm
from tpm_jax.reduction.common import Reduction

__all__ = ['METHODS', 'Reduction', 'drop', 'evit', 'get', 'tome', 'tpm']

METHODS = {'tpm': tpm.reduce, 'evit': evit.reduce, 'drop': drop.reduce, 'tome': tome.reduce}


def get(method: str):
  return METHODS[method]
