"""Feeding locally installed copies of public datasets to the real TFDS builders (no network).

Debian's ``dataset-fashion-mnist`` installs the files TFDS's ``fashion_mnist`` builder downloads,
recompressed by Debian (same data, gzip headers normalised), so their checksums differ from the
ones TFDS registers. We run the real builder with those files as its manual dir and with the
registered checksums extended by the Debian ones pinned below; nothing else is changed, and the
prepared dataset is the ordinary ``fashion_mnist`` that ``tfds.load`` reads.
"""
from __future__ import annotations

import logging
import os

from tpm_jax.files import sha256

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
# filename -> (size, sha256) of Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1.
DEBIAN_FASHION_MNIST = {
    't10k-images-idx3-ubyte.gz': (4422079, 'cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa'),
    't10k-labels-idx1-ubyte.gz': (5125, '8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05'),
    'train-images-idx3-ubyte.gz': (26421856, 'b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7'),
    'train-labels-idx1-ubyte.gz': (29491, '0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056'),
}


def is_prepared(builder) -> bool:
  """A TFDS builder's dataset is prepared, with ArrayRecord files (what Grain reads)."""
  import tensorflow_datasets as tfds
  return builder.is_prepared() and tfds.core.file_adapters.FileFormat.ARRAY_RECORD in \
      builder.info.available_file_formats()


def prepare_fashion_mnist(data_dir: str | None = None, source_dir: str = DEBIAN_FASHION_MNIST_DIR) -> str:
  """Prepare TFDS's ``fashion_mnist`` in ``data_dir`` in ArrayRecord (what ``tfds.data_source`` and
  Grain read); returns the TFDS data dir. (A copy prepared earlier in TFRecord only is moved aside
  by ``tpm_jax.data.prepare`` first.)

  Uses the files in ``source_dir`` (Debian's package, or the original downloads) when present,
  otherwise lets TFDS download them.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.download import checksums

  data_dir = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)  # TFDS's own default ($TFDS_DATA_DIR)
  real = tfds.builder('fashion_mnist', data_dir=data_dir)
  array_record = tfds.core.file_adapters.FileFormat.ARRAY_RECORD
  if is_prepared(real):
    return data_dir
  if real.is_prepared():
    raise ValueError(f'{real.data_dir} holds fashion_mnist in TFRecord only: tpm_jax.data.prepare moves it aside first')
  have_local = all(os.path.exists(os.path.join(source_dir, f)) for f in DEBIAN_FASHION_MNIST)
  if not have_local:
    log.info('fashion_mnist: %s not found, downloading with TFDS', source_dir)
    real.download_and_prepare(file_format=array_record)
    return data_dir

  registered = dict(real.url_infos)
  accepted = {}
  for url, info in registered.items():
    fname = info.filename
    local = os.path.join(source_dir, fname)
    got = checksums.UrlInfo(size=os.path.getsize(local), checksum=sha256(local), filename=fname)
    debian = DEBIAN_FASHION_MNIST.get(fname)
    if got == info or (debian and (got.size, got.checksum) == debian):
      accepted[url] = got
    else:
      raise ValueError(f'{local}: size {got.size}, sha256 {got.checksum} is neither the file TFDS registers '
                       f'nor Debian\'s dataset-fashion-mnist copy')

  class _LocalFashionMNIST(type(real), skip_registration=True):
    name = real.name  # same dataset, same place on disk
    url_infos = accepted  # the registered checksums, extended by the verified local copies

  builder = _LocalFashionMNIST(data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=source_dir),
                               file_format=array_record)
  return data_dir
