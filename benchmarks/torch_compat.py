"""Importing timm beside the CPU build of torch, for the tests and the benchmarks (torch is not a
dependency of the library, and nothing in ``tpm_jax`` imports this)."""
import glob
import importlib.util
import os

_LIB = None  # keeps the torchvision schema library alive


def define_missing_torchvision_ops():
  """timm imports torchvision; PyPI's torchvision cannot load its C++ ops beside the CPU torch
  build used here ("operator torchvision::nms does not exist"). Declaring the two schemas that
  torchvision's meta registrations look up is enough for timm's model code."""
  global _LIB
  import torch
  try:
    torch.ops.torchvision.nms  # noqa: B018
    return
  except (AttributeError, RuntimeError):
    pass
  if _load_torchvision_ops(torch):  # a torchvision built for this torch (e.g. a CUDA machine's)
    return
  _LIB = torch.library.Library('torchvision', 'DEF')
  for schema in ('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
                 'qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor'):
    _LIB.define(schema)


def _load_torchvision_ops(torch) -> bool:
  """Load torchvision's C++ ops library without importing torchvision; False if it does not load."""
  spec = importlib.util.find_spec('torchvision')
  if spec is None or not spec.submodule_search_locations:
    return False
  for path in glob.glob(os.path.join(list(spec.submodule_search_locations)[0], '_C*.so')):
    try:
      torch.ops.load_library(path)
      torch.ops.torchvision.nms  # noqa: B018
      return True
    except (OSError, AttributeError, RuntimeError):
      pass
  return False


def import_timm():
  """timm, importable, with torch using every core."""
  import torch
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  define_missing_torchvision_ops()
  import timm
  return timm
