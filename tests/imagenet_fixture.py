"""A tiny, offline `imagenet2012` for tests, built by the REAL TFDS builder.

`make_imagenet_manual_dir` writes the two archives the TFDS `imagenet2012` builder reads from
its `manual_dir` (see tensorflow_datasets/datasets/imagenet2012/imagenet2012_dataset_builder.py):

* `ILSVRC2012_img_train.tar`: a tar of per-class tars `<synset>.tar`, each holding JPEGs
  (`<synset>_<n>.JPEG`). The builder takes the label from the member name (`fname[:-4]`).
* `ILSVRC2012_img_val.tar`: JPEGs named `ILSVRC2012_val_%08d.JPEG`.

`ILSVRC2012_img_test.tar` is optional (unlabelled test split); it is not written, and the
builder only logs a warning about it.

Caveat about the validation labels: the builder does NOT look the labels up by the index in the
file name. `imagenet_common.get_validation_labels` does
`dict(zip(sorted(tar.getnames()), validation_labels.txt lines))`, i.e. the k-th name of the
*sorted member list* (directories included) gets the k-th line of the shipped
`validation_labels.txt`. A val tar with only a few images would therefore get the labels of the
first few lines of that file (random classes, almost never in 0..num_classes-1). To keep the
builder untouched and the labels honest, the val tar written here mirrors the real one: every
index 1..max_index up to the last chosen image is present, the chosen ones as JPEGs and the rest
as empty *directory* entries `ILSVRC2012_val_%08d/`. Directories count in `getnames()` (so the
positions line up and each JPEG gets its true ground-truth label) but `iter_archive` skips them
(so they produce no examples). For 4 classes and 16 images that is ~4.6k 512-byte headers
(~2.4 MB), which `tarfile` lists in a few ms.

Images are crops of the real photographs bundled with scikit-image (no fetching): each class
uses a different source photo, each image a different random crop / flip / brightness.
Nothing here touches the network: the builder is manual-only, GCS is disabled in TFDS by default
(`gcs_utils._is_gcs_disabled`), and `try_gcs=False` / `try_download_gcs=False` are set anyway.
"""
import io
import os
import tarfile

import numpy as np
from PIL import Image

TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
VAL_NAME = 'ILSVRC2012_val_%08d'

# Real photographs shipped inside scikit-image (skimage/data/*.png|jpg), one per class.
_PHOTOS = ('chelsea', 'coffee', 'astronaut', 'rocket', 'hubble_deep_field', 'immunohistochemistry',
           'retina', 'motorcycle_left', 'camera', 'coins', 'moon', 'brick', 'grass', 'gravel',
           'page', 'text')


def _imagenet_files():
  """(ordered synset list as TFDS labels them, validation ground truth synset per image index-1)."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  with open(os.fspath(imagenet_common.label_names_file())) as f:
    synsets = f.read().split()
  with open(os.fspath(tfds.core.tfds_path(imagenet_common._VALIDATION_LABELS_FNAME))) as f:
    val_truth = f.read().split()
  assert len(synsets) == 1000 and len(val_truth) == 50000, (len(synsets), len(val_truth))
  return synsets, val_truth


def load_photo(cls):
  """RGB uint8 photo for class index `cls` (later classes reuse photos with channels permuted)."""
  from skimage import data
  name = _PHOTOS[cls % len(_PHOTOS)]
  if name == 'motorcycle_left':
    img = data.stereo_motorcycle()[0]
  else:
    img = getattr(data, name)()
  img = np.asarray(img)
  if img.dtype != np.uint8:
    img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-8))).astype(np.uint8)
  if img.ndim == 2:
    img = np.stack([img] * 3, axis=-1)
  img = img[..., :3]
  perms = ((0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0), (0, 2, 1), (1, 0, 2))
  return np.ascontiguousarray(img[..., perms[(cls // len(_PHOTOS)) % len(perms)]])


def _random_view(photo, rng, size, quality=90):
  """JPEG bytes of a random crop (40-100% of the short side, mild aspect jitter), flip, brightness."""
  h, w = photo.shape[:2]
  side = min(h, w) * rng.uniform(0.4, 1.0)
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
  ch = int(min(h, max(8, side / np.sqrt(aspect))))
  cw = int(min(w, max(8, side * np.sqrt(aspect))))
  y = rng.randint(0, h - ch + 1)
  x = rng.randint(0, w - cw + 1)
  crop = photo[y:y + ch, x:x + cw]
  if rng.rand() < 0.5:
    crop = crop[:, ::-1]
  crop = np.clip(crop.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
  im = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)
  buf = io.BytesIO()
  im.save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def _add_bytes(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  info.mtime = 0
  tar.addfile(info, io.BytesIO(payload))


def make_imagenet_manual_dir(manual_dir, *, num_classes=4, train_per_class=12, num_val=16, size=96,
                             seed=0) -> dict:
  """Write ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into `manual_dir`.

  Train classes are the first `num_classes` synsets of TFDS's label list (labels 0..num_classes-1),
  `train_per_class` images each. The validation tar holds `num_val` images: the lowest ILSVRC2012
  validation indices whose ground truth is one of those classes, each a view of its class's photo
  (plus empty directory entries for the skipped indices; see the module docstring).
  """
  if not 1 <= num_classes <= 1000:
    raise ValueError(f'num_classes must be in 1..1000, got {num_classes}')
  synsets_all, val_truth = _imagenet_files()
  synsets = synsets_all[:num_classes]
  label_of = {s: i for i, s in enumerate(synsets)}
  # 1-based validation indices whose TFDS ground-truth label is one of our classes.
  val_indices = [i + 1 for i, s in enumerate(val_truth) if s in label_of][:num_val]
  if len(val_indices) < num_val:
    raise ValueError(f'only {len(val_indices)} validation images exist for {num_classes} classes')
  val_labels = [label_of[val_truth[i - 1]] for i in val_indices]

  os.makedirs(manual_dir, exist_ok=True)
  rng = np.random.RandomState(seed)
  photos = [load_photo(c) for c in range(num_classes)]

  train_path = os.path.join(manual_dir, TRAIN_TAR)
  with tarfile.open(train_path, 'w', format=tarfile.USTAR_FORMAT) as outer:
    for c, synset in enumerate(synsets):
      inner_buf = io.BytesIO()
      with tarfile.open(fileobj=inner_buf, mode='w', format=tarfile.USTAR_FORMAT) as inner:
        for n in range(train_per_class):
          _add_bytes(inner, f'{synset}_{n + 1}.JPEG', _random_view(photos[c], rng, size))
      _add_bytes(outer, f'{synset}.tar', inner_buf.getvalue())

  val_path = os.path.join(manual_dir, VAL_TAR)
  chosen = dict(zip(val_indices, val_labels))
  val_files = []
  with tarfile.open(val_path, 'w', format=tarfile.USTAR_FORMAT) as tar:
    for idx in range(1, (val_indices[-1] if val_indices else 0) + 1):
      if idx in chosen:
        fname = VAL_NAME % idx + '.JPEG'
        _add_bytes(tar, fname, _random_view(photos[chosen[idx]], rng, size))
        val_files.append(fname)
      else:  # placeholder so sorted(getnames()) lines up with validation_labels.txt
        info = tarfile.TarInfo(VAL_NAME % idx)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.mtime = 0
        tar.addfile(info)

  return {
      'synsets': list(synsets),
      'label_ids': list(range(num_classes)),
      'num_classes': num_classes,
      'train_per_class': train_per_class,
      'num_train': num_classes * train_per_class,
      'train_counts': {i: train_per_class for i in range(num_classes)},
      'num_val': num_val,
      'val_indices': val_indices,
      'val_files': val_files,
      'val_labels': val_labels,
      'val_counts': {i: val_labels.count(i) for i in range(num_classes)},
      'val_placeholder_dirs': (val_indices[-1] - len(val_indices)) if val_indices else 0,
      'size': size,
      'photos': [_PHOTOS[c % len(_PHOTOS)] for c in range(num_classes)],
      'train_tar': train_path,
      'val_tar': val_path,
  }


def build_tiny_imagenet(tmp_dir, file_format='array_record', **kw):
  """Make `<tmp_dir>/manual` and prepare `imagenet2012` into `<tmp_dir>/tfds` with the real builder.

  Keyword arguments go to `make_imagenet_manual_dir`. Returns `(data_dir, manual_dir)`; afterwards
  `tfds.data_source('imagenet2012', data_dir=data_dir, split='train'|'validation')` works offline (ArrayRecord).
  """
  import tensorflow_datasets as tfds
  tmp_dir = os.fspath(tmp_dir)
  manual_dir = os.path.join(tmp_dir, 'manual')
  data_dir = os.path.join(tmp_dir, 'tfds')
  make_imagenet_manual_dir(manual_dir, **kw)
  builder = tfds.builder('imagenet2012', data_dir=data_dir, try_gcs=False)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False), file_format=file_format)
  return data_dir, manual_dir
