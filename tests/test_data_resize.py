"""DIGITS' four resize modes, pixel for pixel, and the fast window path used by training."""

import math

import numpy as np
import PIL.Image
import pytest

from alexnet_jax.data import resize


def _round2(x):  # Python 2's int(round(x)), which DIGITS ran with
  return int(math.floor(x + 0.5))


def digits_reference(image, height, width, resize_mode, rng):
  """A line-by-line port of DIGITS' utils/image.py resize_image (imresize = Pillow BILINEAR resize)."""
  def imresize(a, size):
    return np.asarray(PIL.Image.fromarray(a).resize((size[1], size[0]), PIL.Image.BILINEAR))
  channels = 1 if image.ndim == 2 else 3
  if image.shape[0] == height and image.shape[1] == width:
    return image
  width_ratio = float(image.shape[1]) / width
  height_ratio = float(image.shape[0]) / height
  if resize_mode == 'squash' or width_ratio == height_ratio:
    return imresize(image, (height, width))
  elif resize_mode == 'crop':
    if width_ratio > height_ratio:
      resize_height = height
      resize_width = _round2(image.shape[1] / height_ratio)
    else:
      resize_width = width
      resize_height = _round2(image.shape[0] / width_ratio)
    image = imresize(image, (resize_height, resize_width))
    if width_ratio > height_ratio:
      start = _round2((resize_width - width) / 2.0)
      return image[:, start:start + width]
    start = _round2((resize_height - height) / 2.0)
    return image[start:start + height, :]
  if resize_mode == 'fill':
    if width_ratio > height_ratio:
      resize_width = width
      resize_height = _round2(image.shape[0] / width_ratio)
      if (height - resize_height) % 2 == 1:
        resize_height += 1
    else:
      resize_height = height
      resize_width = _round2(image.shape[1] / height_ratio)
      if (width - resize_width) % 2 == 1:
        resize_width += 1
    image = imresize(image, (resize_height, resize_width))
  else:  # half_crop
    new_ratio = (width_ratio + height_ratio) / 2.0
    resize_width = _round2(image.shape[1] / new_ratio)
    resize_height = _round2(image.shape[0] / new_ratio)
    if width_ratio > height_ratio and (height - resize_height) % 2 == 1:
      resize_height += 1
    elif width_ratio < height_ratio and (width - resize_width) % 2 == 1:
      resize_width += 1
    image = imresize(image, (resize_height, resize_width))
    if width_ratio > height_ratio:
      start = _round2((resize_width - width) / 2.0)
      image = image[:, start:start + width]
    else:
      start = _round2((resize_height - height) / 2.0)
      image = image[start:start + height, :]
  if width_ratio > height_ratio:
    padding = (height - resize_height) // 2
    noise_size = (padding, width) + ((channels,) if channels > 1 else ())
    noise = rng.integers(0, 255, noise_size, dtype=np.uint8)
    return np.concatenate((noise, image, noise), axis=0)
  padding = (width - resize_width) // 2
  noise_size = (height, padding) + ((channels,) if channels > 1 else ())
  noise = rng.integers(0, 255, noise_size, dtype=np.uint8)
  return np.concatenate((noise, image, noise), axis=1)


SHAPES = [(30, 50), (50, 30), (17, 23), (40, 40), (9, 64), (64, 9), (25, 20), (21, 21)]


@pytest.mark.parametrize('mode', resize.RESIZE_MODES)
@pytest.mark.parametrize('channels', [1, 3])
def test_matches_digits_reference_bit_for_bit(mode, channels):
  rng = np.random.default_rng(1)
  for h, w in SHAPES:
    for th, tw in [(16, 16), (20, 12), (12, 20)]:
      shape = (h, w, 3) if channels == 3 else (h, w)
      img = rng.integers(0, 256, shape, dtype=np.uint8)
      ours = resize.resize_image(img, th, tw, channels=channels, resize_mode=mode,
                                 rng=np.random.default_rng(7))
      ref = digits_reference(img, th, tw, mode, np.random.default_rng(7))
      assert ours.shape == (th, tw, channels)
      np.testing.assert_array_equal(ours.reshape(ref.shape), ref, err_msg=f'{mode} {shape} -> {th}x{tw}')


def test_hand_checked_geometry():
  # 8 wide x 4 high, columns of constant value 0..7 (x 10); target 4x4.
  img = np.repeat((np.arange(8, dtype=np.uint8) * 10)[None, :], 4, axis=0)
  # crop: scale by the smaller ratio (height: 1) -> unchanged 8x4, keep the centre columns 2..5.
  np.testing.assert_array_equal(resize.resize_image(img, 4, 4, resize_mode='crop')[0, :, 0], [20, 30, 40, 50])
  # fill: scale by the larger ratio (2) -> 4x2, then one noise row above and one below (same noise).
  out = resize.resize_image(img, 4, 4, resize_mode='fill', rng=np.random.default_rng(0))[:, :, 0]
  np.testing.assert_array_equal(out[0], out[3])
  assert (out[0] <= 254).all()
  np.testing.assert_array_equal(out[1], out[2])      # the resized content, 2 identical rows
  # half_crop: ratio (2 + 1) / 2 = 1.5 -> 5.33 -> 5 wide, 2.67 -> 3 high (+1 to make the padding even).
  plan = resize.plan_resize(8, 4, 4, 4, 'half_crop')
  assert (plan.x.resized, plan.y.resized) == (5, 4) and plan.x.start == 1 and plan.noise_pad == 0
  # squash of an image already at the target size returns it untouched.
  same = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
  assert resize.resize_image(same, 4, 4) is same or np.array_equal(resize.resize_image(same, 4, 4), same)


def test_python2_rounding_of_halves():
  # 9x4 -> crop to 4x4: resized 9 wide, start = round((9 - 4) / 2) = round(2.5): 3 in Python 2, 2 in Python 3.
  plan = resize.plan_resize(9, 4, 4, 4, 'crop')
  assert plan.x.resized == 9 and plan.x.start == 3
  img = np.repeat(np.arange(9, dtype=np.uint8)[None, :], 4, axis=0)
  np.testing.assert_array_equal(resize.resize_image(img, 4, 4, resize_mode='crop')[0, :, 0], [3, 4, 5, 6])


def test_extreme_aspect_ratio_does_not_crash():
  img = np.zeros((1, 400, 3), np.uint8)
  for mode in resize.RESIZE_MODES:
    assert resize.resize_image(img, 16, 16, resize_mode=mode).shape == (16, 16, 3)


@pytest.mark.parametrize('mode', resize.RESIZE_MODES)
def test_window_equals_crop_of_full_resize(mode):
  rng = np.random.default_rng(3)
  img = PIL.Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
  plan = resize.plan_resize(53, 37, 32, 32, mode)
  noise = resize.make_noise(plan, 3, np.random.default_rng(5))
  full = resize.render(img, plan, channels=3, noise=noise, exact=True)
  for x, y, s in [(0, 0, 28), (4, 4, 28), (3, 1, 20), (0, 12, 20), (10, 0, 22)]:
    exact = resize.render(img, plan, channels=3, noise=noise, window=(x, y, s, s), exact=True)
    np.testing.assert_array_equal(exact, full[y:y + s, x:x + s])
    fast = resize.render(img, plan, channels=3, noise=noise, window=(x, y, s, s), exact=False)
    assert np.abs(fast.astype(int) - full[y:y + s, x:x + s]).max() <= 1


def test_render_from_drafted_image_keeps_geometry():
  rng = np.random.default_rng(0)
  big = PIL.Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
  half = big.resize((48, 32), PIL.Image.BILINEAR)          # what a 1/2 draft decode would give
  plan = resize.plan_resize(96, 64, 16, 16, 'crop')
  a = resize.render(half, plan, channels=3, scale=2)
  b = resize.render(big, plan, channels=3)
  assert a.shape == b.shape == (16, 16, 3)
  assert np.abs(a.astype(int) - b).mean() < 20              # same picture, slightly different filtering


def test_bad_mode_raises():
  with pytest.raises(ValueError, match='resize_mode'):
    resize.plan_resize(10, 10, 5, 5, 'stretch')
