"""Inference checkpoints: export from a training workdir, load by path.

  python -m tpm_jax.export --workdir DIR --output OUT [--step N] [--safetensors OUT.safetensors]

OUT is a standalone Orbax directory: ``OUT/params`` (EMA parameters if the run kept them,
otherwise the live ones), ``OUT/config.json`` (the full training config, which holds the model
config) and ``OUT/checksums.json`` (SHA-256 of every file, written last). ``tpm_jax.load_model(OUT)``
returns a ready model, after verifying the checksums (as ``init.checkpoint`` does).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from tpm_jax import checkpoint
from tpm_jax.checkpoint import CheckpointError, load_params_into
from tpm_jax.models.registry import model_from_config
from tpm_jax.timm_weights import export_timm_weights

EXPORT_CONFIG = 'config.json'


def read_config(path: str) -> ml_collections.ConfigDict:
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_from_workdir(workdir: str, step: int | None = None):
  """(model, config, step) from a training workdir's checkpoint, read-only: the ``ema`` item when
  the run kept one, else ``params``, restored alone (no optimizer, schedule or training graph);
  the newest step that passes its checks, or ``step``. Nothing in the workdir is changed."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{workdir} is not a training workdir: {path} does not exist')
  config = read_config(path)
  model = model_from_config(config)
  params, step, _ = checkpoint.restore_params(workdir, checkpoint.abstract_params(model, jax.local_devices()[0]),
                                              step=step)
  checkpoint.params_into_model(model, params)
  return model, config, step


def export(workdir: str, output: str, *, step: int | None = None, safetensors: str | None = None) -> str:
  model, config, step = restore_from_workdir(workdir, step)
  output = os.path.abspath(output)
  os.makedirs(output, exist_ok=True)
  if os.path.exists(os.path.join(output, checkpoint.CHECKSUMS)):  # a previous export's: rewritten at the end
    os.remove(os.path.join(output, checkpoint.CHECKSUMS))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(output, 'params'), nnx.state(model, nnx.Param), force=True)
  checkpointer.wait_until_finished()
  with open(os.path.join(output, EXPORT_CONFIG), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  with open(os.path.join(output, 'export.json'), 'w') as f:
    json.dump(dict(workdir=os.path.abspath(workdir), step=step), f)
  if safetensors:
    export_timm_weights(model, safetensors)
  checkpoint.write_checksums(output)  # last: SHA-256 of every file of the export, verified by load_model / init
  return output


def load_model(path: str):
  """A ready model from an export directory (``python -m tpm_jax.export``) or a training workdir."""
  if os.path.isdir(os.path.join(path, 'checkpoints')) and not os.path.isdir(os.path.join(path, 'params')):
    return restore_from_workdir(path)[0]
  return load_params_into(model_from_config(read_config(os.path.join(path, EXPORT_CONFIG))), path)


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m tpm_jax.export', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', required=True)
  p.add_argument('--output', required=True)
  p.add_argument('--step', type=int, default=None, help='default: the latest complete checkpoint')
  p.add_argument('--safetensors', default=None, help='also write timm-named weights here')
  args = p.parse_args(argv)
  try:
    out = export(args.workdir, args.output, step=args.step, safetensors=args.safetensors)
  except (FileNotFoundError, CheckpointError, OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1 if isinstance(e, CheckpointError) else 2)
  with open(os.path.join(out, 'export.json')) as f:
    print(f'exported {args.workdir} step {json.load(f)["step"]} to {out}')

