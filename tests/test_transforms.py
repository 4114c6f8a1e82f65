"""DeiT's host-side transforms (tpm_jax.data.transforms, tpm_jax.data.randaugment) and the device-side random
erasing (tpm_jax.augment.random_erasing), compared pixel for pixel with timm's own transforms on real photographs:
``TimmRandomness`` draws from the generators timm and torchvision use (Python's ``random``, ``np.random``,
``torch.rand``), so seeding them before timm's transform and again before ours gives both the same draws."""
import io
import pickle
import random

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from configs.common import base_config
from tpm_jax import augment
from tpm_jax.data import randaugment as ra
from tpm_jax.data import transforms as T

try:
  import torch
except ImportError:  # the comparisons with timm skip (the `timm` fixture); the rest runs
  torch = None

FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean


class TimmRandomness(T.Randomness):
  """The draws timm and torchvision make, from their global generators."""

  def __init__(self):
    pass

  def random(self):
    return random.random()

  def uniform(self, a, b):
    return random.uniform(a, b)

  def gauss(self, mu, sigma):
    return random.gauss(mu, sigma)

  def randint(self, a, b):
    return random.randint(a, b)

  def choice(self, n, size, replace, p=None):
    return np.random.choice(n, size, replace=replace, p=p)

  def flip(self, p):
    return bool(torch.rand(1) < p)


def _seed(s):
  random.seed(s)
  np.random.seed(s)
  torch.manual_seed(s)


def _jpeg(array, quality=90):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()


def _u8(img):
  return np.asarray(img, np.uint8)


@pytest.fixture(scope='module')
def photos():
  """JPEG bytes of real photos: square, wide, wider, tall, small, a panorama strip (RRC's fallback), 13 x 11
  (crops of the whole width or height: the <= in RRC's test)."""
  coffee = skdata.coffee()
  arrays = {'astronaut': skdata.astronaut(), 'chelsea': skdata.chelsea(), 'coffee': coffee,
            'tall': np.ascontiguousarray(np.rot90(coffee)), 'small': skdata.chelsea()[::3, ::4],
            'strip': coffee[180:220], 'tiny': skdata.astronaut()[::40, ::50]}
  return {name: _jpeg(a) for name, a in arrays.items()}


def _pil(data):
  return Image.open(io.BytesIO(data)).convert('RGB')  # timm's dataset loader


@pytest.fixture(scope='module')
def small_photo():
  """A non-square photo small enough to run every op at every magnitude quickly."""
  return Image.fromarray(skdata.coffee()).resize((150, 100), Image.BICUBIC)


@pytest.fixture
def timm_posterize_0(timm, monkeypatch):
  """timm with Pillow 13 raises in Posterize to 0 bits (PosterizeIncreasing at m=10, which mstd0.5 reaches);
  give it Pillow < 13's answer (black) there, as tpm_jax does, so whole pipelines can be compared."""
  from timm.data import auto_augment
  orig = auto_augment.posterize

  def posterize(img, bits_to_keep, **kw):
    return img.point([0] * 768) if bits_to_keep <= 0 else orig(img, bits_to_keep, **kw)
  for name in ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal'):
    monkeypatch.setitem(auto_augment.NAME_TO_OP, name, posterize)
  return timm


def _aug(**kw):
  aug = base_config().aug
  for k, v in kw.items():
    aug[k] = v
  return aug


# ------------------------------------------------------------------------------------------------
# random resized crop, flip


@pytest.mark.parametrize('scale', [(0.08, 1.0), (0.5, 1.0), (2.0, 3.0)])  # (2, 3): every try fails: the fallback
def test_random_resized_crop_matches_timm(timm, photos, scale):
  from timm.data.transforms import RandomResizedCropAndInterpolation
  theirs = RandomResizedCropAndInterpolation(224, scale=scale, interpolation='bicubic')
  for name, data in photos.items():
    img = _pil(data)
    for s in range(12):
      _seed(s)
      expected = _u8(theirs(img))
      _seed(s)
      out = _u8(T.random_resized_crop(img, 224, scale, rnd=TimmRandomness()))
      assert out.shape == (224, 224, 3)
      assert np.array_equal(out, expected), (name, s)


def test_crop_and_flip_match_timm(timm, photos):
  """The train transform without RandAugment and erasing: RRC (bicubic) + RandomHorizontalFlip, from bytes."""
  theirs = timm.data.create_transform(224, is_training=True, interpolation='bicubic', color_jitter=None,
                                      separate=True)[0]
  ours = T.train_transform(_aug(randaugment='', random_erasing=0.0), 224, 3)
  flipped = []
  for name in ('astronaut', 'tall'):
    for s in range(10):
      _seed(s)
      expected = _u8(theirs(_pil(photos[name])))
      _seed(s)
      out = ours(photos[name], TimmRandomness())
      assert np.array_equal(out['image'], expected), (name, s)
      assert not out['erase'].any()
      _seed(s)
      crop = _u8(T.random_resized_crop(_pil(photos[name]), 224, rnd=TimmRandomness()))
      flipped.append(np.array_equal(out['image'], crop[:, ::-1]))
      assert flipped[-1] or np.array_equal(out['image'], crop)
  assert 0 < sum(flipped) < len(flipped)  # both outcomes seen


# ------------------------------------------------------------------------------------------------
# RandAugment


@pytest.mark.parametrize('name', sorted(ra.OPS))
def test_every_op_matches_timm(timm, small_photo, name):
  """timm's AugmentOp at fixed magnitudes, prob 1, both signs (seeds 0 and 1 draw random() > 0.5 and < 0.5),
  on a photo and a low-contrast copy, bicubic and bilinear."""
  from timm.data.auto_augment import AugmentOp
  low = Image.fromarray((_u8(small_photo) // 2 + 60).astype(np.uint8))
  interps = (Image.BICUBIC, Image.BILINEAR) if name in ra.GEOMETRIC else (Image.BICUBIC,)
  for interp in interps:
    for m in (0, 2, 5.5, 9, 10):
      hparams = dict(img_mean=FILL, translate_const=100, interpolation=interp)
      op = AugmentOp(name, prob=1.0, magnitude=m, hparams=hparams)
      for img in (small_photo, low):
        for s in (0, 1):
          _seed(s)
          out = _u8(ra.apply_op(img, name, m, TimmRandomness(), fill=FILL, translate_const=100, interpolation=interp))
          _seed(s)
          try:
            expected = _u8(op(img))
          except ValueError:  # Pillow 13 refuses posterize to 0 bits; ours gives Pillow < 13's black
            assert name.startswith('Posterize') and ra.OPS[name][1](m, None, None) == (0,)
            assert not out.any()
            continue
          assert np.array_equal(out, expected), (name, m, s, interp)


def test_ops_change_the_photo_and_are_identities_at_their_no_change_level(small_photo):
  """(From the TF tests.) At m=9 every op changes the photo (AutoContrast: the low-contrast copy); at m=0 the
  geometric ops and the increasing ones without a random sign are identities."""
  photo = _u8(small_photo)
  low = Image.fromarray((photo // 2 + 60).astype(np.uint8))
  rnd = T.example_randomness(0)
  for name in ra.RAND_TRANSFORMS + ra.RAND_INCREASING_TRANSFORMS:
    img = low if name == 'AutoContrast' else small_photo
    out = _u8(ra.apply_op(img, name, 9, rnd, fill=FILL))
    assert (out != _u8(img)).any(-1).mean() > 0.01, name
    if name in ra.GEOMETRIC:
      assert (out == FILL).all(-1).mean() > 0.05, name  # the fill colour comes in
  for name in sorted(ra.GEOMETRIC) + ['SolarizeIncreasing', 'SolarizeAdd']:
    assert np.array_equal(_u8(ra.apply_op(small_photo, name, 0, rnd)), photo), name
  # PIL's conventions: a positive translate moves the content left / up
  out = _u8(ra.translate_x_rel(small_photo, 0.2, interpolation=Image.NEAREST))
  assert np.array_equal(out[:, :120], photo[:, 30:]) and (out[:, 120:] == 128).all()


@pytest.mark.parametrize('spec', ['rand-m9-mstd0.5-inc1', 'rand-m9-n2', 'rand-m7-n3-mstd1-p0.7', 'rand-m9-mstd101',
                                  'rand-m12-mstd1-mmax11'])
def test_rand_augment_matches_timm(timm_posterize_0, photos, spec):
  from timm.data.auto_augment import rand_augment_transform
  hparams = dict(translate_const=100, img_mean=FILL, interpolation=Image.BICUBIC)
  theirs = rand_augment_transform(spec, dict(hparams))
  kw = ra.parse_randaugment(spec)
  img = _pil(photos['chelsea']).resize((160, 120), Image.BICUBIC)
  changed = 0
  for s in range(40):
    _seed(s)
    expected = _u8(theirs(img))
    _seed(s)
    out = _u8(ra.rand_augment(img, TimmRandomness(), fill=FILL, translate_const=100, **kw))
    assert np.array_equal(out, expected), (spec, s)
    changed += not np.array_equal(out, _u8(img))
  assert changed > 20


def test_parse_randaugment_reads_timms_strings(timm):
  from timm.data.auto_augment import rand_augment_transform
  for spec in ('rand-m9-mstd0.5-inc1', 'rand-m9-n2', 'rand-n3-m5', 'rand-m7-p0.3-mmax12', 'rand-m9-mstd200'):
    kw = ra.parse_randaugment(spec)
    theirs = rand_augment_transform(spec, {})
    op = theirs.ops[0]
    names = ra.RAND_INCREASING_TRANSFORMS if kw['increasing'] else ra.RAND_TRANSFORMS
    assert [o.name for o in theirs.ops] == list(names), spec
    assert (kw['num_layers'], kw['magnitude'], kw['magnitude_std'], kw.get('prob', 0.5), kw.get('magnitude_max')) \
        == (theirs.num_layers, op.magnitude, op.magnitude_std, op.prob, op.magnitude_max), spec
  assert ra.parse_randaugment('') is None
  assert ra.parse_randaugment('rand-m9-mstd0.5-inc1') == dict(num_layers=2, magnitude=9, magnitude_std=0.5,
                                                               increasing=True)
  with pytest.raises(ValueError, match=r"aug.randaugment='rand-x9': unknown part 'x9'"):
    ra.parse_randaugment('rand-x9')
  with pytest.raises(ValueError, match='expected a timm RandAugment string'):
    ra.parse_randaugment('augmix-m5')


# ------------------------------------------------------------------------------------------------
# random erasing


def test_erasing_box_matches_timm(timm):
  """The region timm's RandomErasing changes is the box erasing_box draws, with the same draws."""
  from timm.data.random_erasing import RandomErasing
  saw_box = saw_none = 0
  for (H, W), p in (((224, 224), 0.5), ((60, 90), 1.0), ((90, 60), 1.0), ((5, 7), 1.0)):  # (5, 7): the < test
    theirs = RandomErasing(p, mode='pixel', max_count=1, device='cpu')
    x = torch.zeros(3, H, W)
    for s in range(30):
      _seed(s)
      changed = (theirs(x.clone()) != 0).any(0).numpy()
      _seed(s)
      top, left, h, w = T.erasing_box(TimmRandomness(), H, W, p)
      box = np.zeros((H, W), bool)
      box[top:top + h, left:left + w] = True
      assert np.array_equal(changed, box), ((H, W), s)
      saw_box += bool(h and w)
      saw_none += not (h and w)
  assert saw_box > 20 and saw_none > 5


def test_random_erasing_on_device_fills_the_box_with_timms_noise(timm, monkeypatch):
  """timm's noise (recorded from a patched _get_pixels) put where our box is, through augment.random_erasing,
  gives timm's erased tensor exactly; outside the box nothing moves."""
  from timm.data import random_erasing as timm_re
  patches = []

  def get_pixels(per_pixel, rand_color, patch_size, dtype=torch.float32, device='cpu'):
    assert per_pixel
    patches.append(torch.randn(patch_size, generator=torch.Generator().manual_seed(len(patches))))
    return patches[-1]
  monkeypatch.setattr(timm_re, '_get_pixels', get_pixels)
  photo = np.asarray(Image.fromarray(skdata.astronaut()).resize((64, 48), Image.BICUBIC))
  x = ((photo / 255.0 - 0.45) / 0.25).astype(np.float32)  # (H, W, C), "normalised"
  theirs = timm_re.RandomErasing(1.0, mode='pixel', max_count=1, device='cpu')
  outs, boxes, noises = [], [], []
  for s in range(8):
    _seed(s)
    outs.append(theirs(torch.from_numpy(x.transpose(2, 0, 1).copy())).numpy().transpose(1, 2, 0))
    _seed(s)
    box = T.erasing_box(TimmRandomness(), 48, 64, 1.0)
    noise = np.zeros_like(x)
    top, left, h, w = box
    noise[top:top + h, left:left + w] = patches[-1].numpy().transpose(1, 2, 0)
    boxes.append(box)
    noises.append(noise)
  fn = jax.jit(augment.random_erasing)
  ours = np.asarray(fn(None, np.stack([x] * 8), np.stack(boxes), np.stack(noises)))
  assert np.array_equal(ours, np.stack(outs))


def test_random_erasing_on_device_draws_normal_noise_in_the_box_only():
  rs = np.random.RandomState(0)
  images = rs.randn(3, 40, 50, 3).astype(np.float32) + 5.0
  boxes = np.array([[5, 7, 20, 30], [0, 0, 0, 12], [39, 49, 1, 1]], np.int32)
  out = np.asarray(jax.jit(augment.random_erasing)(jax.random.key(0), images, boxes))
  inside = np.zeros(images.shape[:3], bool)
  inside[0, 5:25, 7:37] = inside[2, 39, 49] = True
  assert np.array_equal(out[~inside], images[~inside])
  assert (out[inside] != images[inside]).all()
  noise = out[0, 5:25, 7:37]
  assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1


# ------------------------------------------------------------------------------------------------
# whole transforms


@pytest.mark.parametrize('crop_pct', [0.875, 1.0])
def test_eval_transform_matches_timm(timm, photos, crop_pct):
  from timm.data.transforms_factory import transforms_imagenet_eval
  odd = _jpeg(skdata.coffee()[3:336, 11:268])  # 333 x 257: odd margins for the centre crop
  for size in (224, 32):
    theirs = transforms_imagenet_eval(size, crop_pct=crop_pct, interpolation='bicubic', normalize=False)
    ours = T.eval_transform(_aug(eval_crop_pct=crop_pct), size, 3)
    for name, data in dict(photos, odd=odd).items():
      expected = theirs(_pil(data)).numpy().transpose(1, 2, 0)
      out = ours(data)
      assert out.shape == (size, size, 3) and out.dtype == np.uint8
      assert np.array_equal(out, expected), (name, size, crop_pct)


def test_train_transform_matches_timm_create_transform(timm_posterize_0, photos, monkeypatch):
  """DeiT's recipe: create_transform(224, is_training=True, auto_augment='rand-m9-mstd0.5-inc1', bicubic,
  re_prob=0.25, re_mode='pixel'): the uint8 image before ToTensor exactly, and the normalised, erased tensor
  (our device-side normalize + random_erasing, fed timm's noise) to 1e-6."""
  timm = timm_posterize_0
  from timm.data import random_erasing as timm_re
  patches = []
  real_get_pixels = timm_re._get_pixels

  def get_pixels(*args, **kwargs):
    patches.append(real_get_pixels(*args, **kwargs))
    return patches[-1]
  monkeypatch.setattr(timm_re, '_get_pixels', get_pixels)
  primary, secondary, final = timm.data.create_transform(
      224, is_training=True, auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic', re_prob=0.25,
      re_mode='pixel', re_count=1, separate=True)
  aug = base_config().aug
  ours = T.train_transform(aug, 224, 3)
  op = secondary.transforms[0].ops[0]  # timm's aa_params
  assert (op.kwargs['fillcolor'], op.hparams['translate_const'], op.kwargs['resample']) == \
      (ours.randaugment['fill'], ours.randaugment['translate_const'], ours.randaugment['interpolation'])
  normalize = jax.jit(augment.normalize, static_argnums=(1, 2))
  erase = jax.jit(augment.random_erasing)
  erased = 0
  for name in ('astronaut', 'chelsea', 'tall'):
    for s in range(12):
      _seed(s)
      pil = secondary(primary(_pil(photos[name])))
      expected = final(pil).numpy().transpose(1, 2, 0)
      _seed(s)
      out = ours(photos[name], TimmRandomness())
      assert np.array_equal(out['image'], _u8(pil)), (name, s)
      top, left, h, w = out['erase']
      noise = np.zeros((1, 224, 224, 3), np.float32)
      if h and w:
        noise[0, top:top + h, left:left + w] = patches[-1].numpy().transpose(1, 2, 0)
        erased += 1
      x = normalize(out['image'][None], tuple(aug.mean), tuple(aug.std))
      got = np.asarray(erase(None, x, out['erase'][None], noise))[0]
      np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0, err_msg=f'{name} {s}')
  assert erased >= 3


# ------------------------------------------------------------------------------------------------
# determinism, shapes, pickling


def test_output_is_a_function_of_seed_and_position(photos):
  t = T.train_transform(_aug(random_erasing=1.0), 64, 3)
  a = t(photos['chelsea'], T.example_randomness(0, 3, 7))
  b = t(photos['chelsea'], T.example_randomness(0, 3, 7))
  assert np.array_equal(a['image'], b['image']) and np.array_equal(a['erase'], b['erase'])
  others = [t(photos['chelsea'], T.example_randomness(*key)) for key in ((0, 3, 8), (0, 4, 7), (1, 3, 7))]
  for o in others:
    assert not np.array_equal(o['image'], a['image'])
  r = T.example_randomness(5, 1)
  draws = (r.random(), r.uniform(2, 3), r.gauss(0, 1), r.randint(0, 3), r.choice(15, 2, True), r.flip(0.5))
  assert 0 <= draws[0] < 1 and 2 <= draws[1] <= 3 and draws[3] in range(4) and draws[4].shape == (2,)
  assert isinstance(draws[5], bool)


def test_shapes_and_dtypes_for_one_and_three_channels():
  photo = skdata.astronaut()[::4, ::4]  # 128 x 128
  gray = np.asarray(Image.fromarray(photo).convert('L'))
  rgba = np.dstack([photo, np.full(photo.shape[:2], 77, np.uint8)])
  inputs = {'jpeg': _jpeg(photo), 'gray png': _png(gray), 'rgba png': _png(rgba), 'hw array': gray,
            'hw1 array': gray[..., None], 'rgb array': photo, 'rgba array': rgba}
  for channels in (1, 3):
    train = T.train_transform(_aug(random_erasing=1.0), 32, channels)
    evaluate = T.eval_transform(_aug(), 32, channels)
    for name, data in inputs.items():
      out = train(data, T.example_randomness(0, 1))
      assert out['image'].shape == (32, 32, channels) and out['image'].dtype == np.uint8, (name, channels)
      assert out['erase'].shape == (4,) and out['erase'].dtype == np.int32 and out['erase'][2:].all()
      out = evaluate(data)
      assert out.shape == (32, 32, channels) and out.dtype == np.uint8, (name, channels)
  # alpha dropped, grey replicated, like PIL's convert
  assert np.array_equal(np.asarray(T.decode(_png(rgba), 3)), photo)
  assert np.array_equal(np.asarray(T.decode(gray, 3)), np.repeat(gray[..., None], 3, -1))
  assert np.array_equal(np.asarray(T.decode(photo, 1)), gray)
  with pytest.raises(ValueError, match='uint8'):
    T.decode(photo.astype(np.float32), 3)


def test_transforms_pickle(photos):
  for t in (T.train_transform(_aug(), 64, 3), T.train_transform(_aug(), 64, 1)):
    t2 = pickle.loads(pickle.dumps(t))
    a, b = t(photos['coffee'], T.example_randomness(2, 9)), t2(photos['coffee'], T.example_randomness(2, 9))
    assert np.array_equal(a['image'], b['image']) and np.array_equal(a['erase'], b['erase'])
  t = T.eval_transform(_aug(), 64, 3)
  assert np.array_equal(pickle.loads(pickle.dumps(t))(photos['coffee']), t(photos['coffee']))
