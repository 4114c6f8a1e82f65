"""The sweep's edge: a config file with its arg string and ``--config.*`` flags read as train.py reads them, into
a ``RunConfig`` (``load_run_config``; the ConfigDict itself, ``load_config``, for callers who want it): the one
module of the sweep that imports ``ml_collections``."""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from tpm_jax.cli import describe_flag_error
from tpm_jax.config import ConfigError, RunConfig


def load_config(config: str, overrides=()):
  """The ConfigDict train.py builds from ``--config <config>`` and the overrides (parsed as it does)."""
  fv, argv = flags.FlagValues(), ['sweep', '--config', config, *overrides]
  config_flags.DEFINE_config_file('config', None, flag_values=fv, lock_config=True, sys_argv=argv)
  try:
    fv(argv)
  except Exception as e:  # noqa: BLE001 - absl, ml_collections and get_config raise many kinds
    raise ConfigError(describe_flag_error(e, argv).split('Error whilst parsing config file: ')[-1]) from e
  return fv.config


def load_run_config(config: str, overrides=()) -> RunConfig:
  """The run config train.py reads from ``--config <config>`` and the overrides: ``load_config``'s ConfigDict,
  read once into a ``RunConfig`` here, at the edge."""
  return RunConfig.from_any(load_config(config, overrides))
