"""Inference checkpoints: export from a training workdir, load by path.

  python -m tpm_jax.export --workdir DIR --output OUT [--step N] [--safetensors OUT.safetensors] [--overwrite]

OUT is a standalone Orbax directory: ``OUT/params`` (EMA parameters if the run kept them,
otherwise the live ones), ``OUT/config.json`` (the run's config, as saved with the step),
``OUT/export.json`` (where it came from) and ``OUT/checksums.json`` (SHA-256 of every file).
``tpm_jax.load_model(OUT)`` returns a ready model, after verifying the checksums.

Never destroys: every path is checked before any work; the export is written beside OUT and renamed
into place whole, so OUT is either the old export or the new one; OUT must be new, empty or an
earlier export (anything else only with ``--overwrite``), never the workdir or inside a workdir.

The code is in ``tpm_jax.export.exporting``, imported on first use of a name below, so that
``python -m tpm_jax.export`` can take over SIGINT and SIGTERM before JAX and Orbax are imported.
"""
import importlib

__all__ = ['export', 'load_model', 'main', 'read_config', 'restore_from_workdir', 'check_step']


def __getattr__(name):  # every name of tpm_jax.export.exporting (export.EXPORT_CONFIG too)
  try:
    value = getattr(importlib.import_module('tpm_jax.export.exporting'), name)
  except AttributeError:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}') from None
  globals()[name] = value
  return value


def __dir__():
  return sorted([*globals(), *__all__])
