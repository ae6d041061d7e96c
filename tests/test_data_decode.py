"""Decoding: DIGITS' mode rules, EXIF orientation, draft decoding, and every kind of bad file."""

import io
import os

import numpy as np
import PIL.Image
import pytest

from alexnet_jax.data import decode
from alexnet_jax.data import errors
from alexnet_jax.data import loading
from alexnet_jax.data import folders
from alexnet_jax.data import synthetic


@pytest.fixture(scope='module')
def hostile(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('hostile'))
  return root, synthetic.make_hostile_folder(root)


def test_listing_of_hostile_folder(hostile):
  root, expected = hostile
  listing = folders.scan_folder(root)
  assert listing.classes == ['odd', 'plain']
  listed = {os.path.relpath(k, root) for k in listing.keys}
  want = {p for p, r in expected.items() if r not in ('ignored', errors.DANGLING)}
  assert listed == want              # hidden files/dirs and .txt ignored; the symlink loop followed once
  assert [(os.path.relpath(s['path'], root), s['reason']) for s in listing.skipped] == [
      ('odd/dangling.jpg', errors.DANGLING)]


def test_every_hostile_file_is_decoded_or_skipped_with_its_reason(hostile):
  root, expected = hostile
  for rel, reason in expected.items():
    if reason in ('ignored',):
      continue
    path = os.path.join(root, rel)
    if reason is None:
      out = loading.load_resized(path, image_size=24, resize_mode='fill', channels=3)
      assert out.shape == (24, 24, 3) and out.dtype == np.uint8, rel
      gray = loading.load_resized(path, image_size=24, resize_mode='crop', channels=1)
      assert gray.shape == (24, 24, 1), rel
    else:
      with pytest.raises(errors.DecodeError) as e:
        loading.load_resized(path, image_size=24, resize_mode='squash', channels=3)
      assert e.value.reason == reason, rel


def test_transparency_is_composited_on_white(hostile):
  root, _ = hostile
  d = decode.decode(os.path.join(root, 'odd/rgba.png'), 3)
  a = np.asarray(d.image)
  assert d.image.mode == 'RGB' and (a[:, :20] == 255).all()     # transparent half -> white
  assert not (a[:, 20:] == 255).all()
  pal = decode.decode(os.path.join(root, 'odd/palette_transparent.png'), 3)
  assert pal.image.mode == 'RGB'


def test_mode_conversions(hostile):
  root, _ = hostile
  g16 = np.asarray(decode.decode(os.path.join(root, 'odd/gray16.png'), 1).image)
  assert g16.dtype == np.uint8 and g16.min() == 0 and g16.max() == 255   # 16-bit range scaled, not clipped
  assert decode.decode(os.path.join(root, 'odd/cmyk.jpg'), 3).image.mode == 'RGB'
  assert decode.decode(os.path.join(root, 'odd/gray.jpg'), 3).image.mode == 'RGB'
  assert decode.decode(os.path.join(root, 'plain/a.jpg'), 1).image.mode == 'L'
  la = PIL.Image.new('LA', (4, 4), (0, 0))
  assert np.asarray(decode.to_digits_mode(la, 1)).min() == 255          # LA: transparent -> white


def test_exif_orientation_applied(hostile):
  root, _ = hostile
  d = decode.decode(os.path.join(root, 'odd/rotated_exif.jpeg'), 3)
  assert d.image.size == (30, 60) and d.size == (30, 60)               # stored 60x30, shown upright


def test_draft_decoding_only_when_at_least_twice_the_target(hostile):
  root, _ = hostile
  path = os.path.join(root, 'odd/large.jpg')                            # 1200x900
  d = decode.decode(path, 3, needed=lambda w, h: (256, 256))
  assert d.scale == 2 and d.image.size == (600, 450) and d.size == (1200, 900)
  d = decode.decode(path, 3, needed=lambda w, h: (100, 100))
  assert d.scale == 8 and d.image.size == (150, 113)
  d = decode.decode(path, 3, needed=lambda w, h: (700, 500))
  assert d.scale == 1 and d.image.size == (1200, 900)
  assert decode.decode(path, 3, needed=lambda w, h: (100, 100), draft=False).scale == 1
  # The drafted picture resizes to (nearly) the same pixels as a full decode.
  a = loading.load_resized(path, image_size=64, resize_mode='squash', channels=3)
  b = loading.load_resized(path, image_size=64, resize_mode='squash', channels=3, draft=False)
  assert np.abs(a.astype(int) - b).mean() < 3


def test_in_memory_sources():
  rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
  buf = io.BytesIO()
  PIL.Image.fromarray(rgb).save(buf, format='PNG')
  for src in (rgb, buf.getvalue(), PIL.Image.fromarray(rgb)):
    np.testing.assert_array_equal(np.asarray(decode.decode(src, 3).image), rgb)
  assert decode.decode(rgb[:, :, :1], 3).image.mode == 'RGB'
  with pytest.raises(errors.DecodeError) as e:
    decode.decode(b'', 3)
  assert e.value.reason == errors.EMPTY
  with pytest.raises(errors.DecodeError) as e:
    decode.read_bytes('/nonexistent/file.jpg')
  assert e.value.reason == errors.MISSING


def test_extensions():
  for name in ('a.JPG', 'b.jpeg', 'c.PnG', 'd.bmp', 'e.ppm', 'f.pgm', 'g.webp', 'h.TIF', 'i.tiff'):
    assert decode.has_image_extension(name), name
  for name in ('a.txt', 'b.gif', 'jpg', 'c.jpg.bak'):
    assert not decode.has_image_extension(name), name
