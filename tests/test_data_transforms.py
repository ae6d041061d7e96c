"""Crops, mirrors, mean modes and PCA lighting (Caffe's DataTransformer and the paper)."""

import numpy as np
import pytest

from alexnet_jax.data import contract
from alexnet_jax.data import transforms


def _image(h=8, w=8, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_mean_modes():
  mean = np.random.default_rng(1).uniform(0, 255, (6, 6, 3)).astype(np.float32)
  np.testing.assert_array_equal(transforms.mean_for_mode(mean, 'image'), mean)
  pixel = transforms.mean_for_mode(mean, 'pixel')
  np.testing.assert_allclose(pixel[2, 3], mean.mean(axis=(0, 1)), rtol=1e-6)
  np.testing.assert_allclose(pixel[0, 0], pixel[5, 5])
  assert not transforms.mean_for_mode(mean, 'none').any()
  with pytest.raises(ValueError):
    transforms.mean_for_mode(mean, 'median')


@pytest.mark.parametrize('mirror', [False, True])
@pytest.mark.parametrize('channels', [1, 3])
def test_mean_subtractor_matches_caffe_order(mirror, channels):
  img = _image(10, 12, channels)
  mean = np.random.default_rng(2).uniform(0, 255, (10, 12, channels)).astype(np.float32)
  sub = transforms.MeanSubtractor(mean)
  crop = img[2:8, 3:9]
  got = sub(crop, 2, 3, mirror=mirror)
  # Caffe: out[h, w'] = datum[h_off + h, w_off + w] - mean[h_off + h, w_off + w], w' mirrored.
  want = crop.astype(np.float32) - mean[2:8, 3:9]
  if mirror:
    want = want[:, ::-1]
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got, transforms.subtract_mean(crop, mean, 2, 3, mirror))
  shift = np.arange(channels, dtype=np.float32) + 0.5
  np.testing.assert_allclose(sub(crop, 2, 3, mirror=mirror, shift=shift), want + shift, rtol=1e-6)


def test_center_and_ten_crops():
  img = _image(8, 8)
  mean = np.zeros((8, 8, 3), np.float32)
  sub = transforms.MeanSubtractor(mean)
  center = transforms.crops_from_resized(img, sub, 4, ten_crop=False)
  np.testing.assert_array_equal(center, img[2:6, 2:6])
  ten = transforms.crops_from_resized(img, sub, 4, ten_crop=True)
  assert ten.shape == (10, 4, 4, 3)
  expected = [img[0:4, 0:4], img[0:4, 4:8], img[4:8, 0:4], img[4:8, 4:8], img[2:6, 2:6]]   # TL TR BL BR C
  for k, e in enumerate(expected):
    np.testing.assert_array_equal(ten[k], e)
    np.testing.assert_array_equal(ten[k + 5], e[:, ::-1])
  assert transforms.ten_crop_offsets(256, 256, 224) == [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]


def test_ten_crops_subtract_mean_at_source_position():
  img = _image(6, 6)
  mean = np.random.default_rng(3).uniform(0, 255, (6, 6, 3)).astype(np.float32)
  ten = transforms.crops_from_resized(img, transforms.MeanSubtractor(mean), 4, ten_crop=True)
  np.testing.assert_array_equal(ten[1], img[0:4, 2:6] - mean[0:4, 2:6])
  np.testing.assert_array_equal(ten[6], (img[0:4, 2:6] - mean[0:4, 2:6])[:, ::-1])


def test_random_offsets_cover_every_position():
  rng = np.random.default_rng(0)
  seen = {transforms.random_offsets(rng, 10, 12, 8) for _ in range(500)}
  assert seen == {(y, x) for y in range(3) for x in range(5)}


def test_pca_lighting_shift_statistics():
  rng = np.random.default_rng(0)
  shifts = np.stack([transforms.pca_lighting_shift(rng, 0.1, transforms.IMAGENET_EIGVAL,
                                                   transforms.IMAGENET_EIGVEC) for _ in range(4000)])
  # Covariance of the shift = 255^2 * V diag((0.1 * lambda)^2) V^T.
  v, lam = transforms.IMAGENET_EIGVEC.astype(np.float64), transforms.IMAGENET_EIGVAL.astype(np.float64)
  want = 255.0 ** 2 * v @ np.diag((0.1 * lam) ** 2) @ v.T
  np.testing.assert_allclose(np.cov(shifts.T), want, rtol=0.1, atol=0.05)
  assert abs(shifts.mean()) < 0.5


def test_mirror_hwc():
  a = _image(3, 5, 3)
  np.testing.assert_array_equal(transforms.mirror_hwc(a), a[:, ::-1])
  f = a.astype(np.float32)
  np.testing.assert_array_equal(transforms.mirror_hwc(f), f[:, ::-1])


def test_preprocess_for_eval_on_array_and_saved_contract(tmp_path):
  mean = np.full((8, 8, 3), 10.0, np.float32)
  c = contract.PreprocessContract(8, 6, 'squash', 3, 'pixel', mean)
  img = _image(8, 8)
  out = contract.preprocess_for_eval(img, c)
  np.testing.assert_array_equal(out, img[1:7, 1:7].astype(np.float32) - 10.0)
  c.save(str(tmp_path))
  again = contract.preprocess_for_eval(img, str(tmp_path), ten_crop=True)
  assert again.shape == (10, 6, 6, 3)
  np.testing.assert_array_equal(again[4], out)
  loaded = contract.load_contract(str(tmp_path))
  assert (loaded.image_size, loaded.crop_size, loaded.mean_mode) == ((8, 8), 6, 'pixel')


# ---- DIGITS' W x H images and crop "none" ----------------------------------------------------------------

def test_crops_of_a_rectangle_and_of_no_crop():
  """A 12 x 8 (W x H) image: the square crop's centre and corners, and crop 'none' = the whole image."""
  img = _image(8, 12)
  mean = np.random.default_rng(4).uniform(0, 255, (8, 12, 3)).astype(np.float32)
  sub = transforms.MeanSubtractor(mean)
  ten = transforms.crops_from_resized(img, sub, 6, ten_crop=True)
  expected = [(0, 0), (0, 6), (2, 0), (2, 6), (1, 3)]     # TL TR BL BR C as (y, x)
  assert transforms.ten_crop_offsets(8, 12, 6) == expected
  for k, (y, x) in enumerate(expected):
    np.testing.assert_array_equal(ten[k], img[y:y + 6, x:x + 6] - mean[y:y + 6, x:x + 6])
    np.testing.assert_array_equal(ten[k + 5], ten[k][:, ::-1])
  whole = transforms.crops_from_resized(img, sub, (8, 12), ten_crop=True)
  assert whole.shape == (10, 8, 12, 3)
  for k in range(5):
    np.testing.assert_array_equal(whole[k], img - mean)
    np.testing.assert_array_equal(whole[k + 5], (img - mean)[:, ::-1])
  rng = np.random.default_rng(0)
  assert {transforms.random_offsets(rng, 8, 12, (8, 12)) for _ in range(20)} == {(0, 0)}
  with pytest.raises(ValueError, match='crop 6x9 larger than the image 12x8'):
    transforms.crops_from_resized(img, sub, (9, 6), ten_crop=False)


@pytest.mark.parametrize('crop', [0, 6])
def test_a_rectangular_contract_round_trips_with_width_and_height(tmp_path, crop):
  mean = np.random.default_rng(5).uniform(0, 255, (8, 12, 3)).astype(np.float32)   # H x W
  c = contract.PreprocessContract((12, 8), crop, 'squash', 3, 'image', mean)
  assert (c.width, c.height) == (12, 8)
  assert c.input_shape == ((8, 12, 3) if crop == 0 else (6, 6, 3))
  photo = _image(30, 40)           # squashed to 12 x 8
  out = contract.preprocess_for_eval(photo, c)
  assert out.shape == c.input_shape
  resized = contract.resize_for_eval(photo, c)
  assert resized.shape == (8, 12, 3)
  y, x = transforms.center_offsets(8, 12, c.input_hw)
  np.testing.assert_array_equal(out, resized[y:y + c.input_hw[0], x:x + c.input_hw[1]] - c.centre_mean())
  c.save(str(tmp_path))
  import json  # pylint: disable=g-import-not-at-top
  with open(tmp_path / contract.CONTRACT_FILE, encoding='utf-8') as f:
    saved = json.load(f)
  assert saved['image_size'] == [12, 8] and saved['crop_size'] == crop
  assert saved['input_size'] == ([12, 8] if crop == 0 else [6, 6])
  loaded = contract.load_contract(str(tmp_path))
  assert (loaded.image_size, loaded.crop_size, loaded.input_shape) == ((12, 8), crop, c.input_shape)
  np.testing.assert_array_equal(contract.preprocess_for_eval(photo, str(tmp_path), ten_crop=True)[4], out)


def test_contract_refuses_a_crop_larger_than_the_shorter_side_and_a_wrong_mean():
  mean = np.zeros((8, 12, 3), np.float32)
  with pytest.raises(contract.errors.DataError, match='crop_size=9 must be 0 .none. or in 1..8, the '
                                                      'shorter side of the 12x8 images'):
    contract.PreprocessContract((12, 8), 9, 'squash', 3, 'image', mean)
  with pytest.raises(contract.errors.DataError, match=r'mean image of shape \(8, 12, 3\), expected '
                                                      r'\(12, 8, 3\)'):
    contract.PreprocessContract((8, 12), 0, 'squash', 3, 'image', mean)
