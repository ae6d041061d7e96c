"""The one DIGITS list parser (alexnet_jax/data/lists.py) and every user of it agreeing on one list."""

import os

import pytest

from alexnet_jax.dashboard import views
from alexnet_jax.dashboard import forms
from alexnet_jax.data import errors
from alexnet_jax.data import lists
from alexnet_jax.data import sources

# One list with every case the module docstring decides: a byte-order mark, CRLF line ends, a comment, a
# blank line, a path with spaces whose name ends in a digit, a tab as the separator, trailing spaces and
# tabs, leading spaces, a '#' inside a path, several spaces before the label, and no newline at the end.
TRICKY = ('\ufeff# a comment\r\n'
          '\r\n'
          'my photo 1.jpg 1\r\n'
          'tabbed.jpg\t0\r\n'
          'trailing.jpg 2  \t\r\n'
          '   leading.jpg 0\r\n'
          'sub dir/a#b.jpg   1\r\n'
          '  # an indented comment\r\n'
          'last.jpg 2')
NAMES = ['my photo 1.jpg', 'tabbed.jpg', 'trailing.jpg', 'leading.jpg', 'sub dir/a#b.jpg', 'last.jpg']
LABELS = [1, 0, 2, 0, 1, 2]
LINES = [3, 4, 5, 6, 7, 9]


def _write(path, text: str) -> str:
  with open(path, 'w', encoding='utf-8', newline='') as f:   # newline='': the \r\n stay as written
    f.write(text)
  return str(path)


def test_one_line():
  assert lists.split_line('my pic.jpg') == ('my pic.jpg', None)       # not 'my': the whole line is the path
  assert lists.split_line('my pic.jpg 3') == ('my pic.jpg', 3)
  assert lists.split_line('a\tb.jpg\t\t7 \r') == ('a\tb.jpg', 7)
  assert lists.split_line('12') == ('12', None)                         # one word: a path, never a label
  assert lists.split_line('photo 2.jpg') == ('photo 2.jpg', None)       # '2.jpg' is not an integer
  assert lists.split_line('a.jpg -1') == ('a.jpg -1', None)             # nor is '-1': DIGITS' \d+
  assert lists.split_line('a.jpg 1 # note') == ('a.jpg 1 # note', None)  # no comments after an entry
  for blank in ('', '   ', '\t\r', '# x 3', '   # x'):
    assert lists.split_line(blank) is None


def test_lines_split_as_open_reads_them():
  assert lists.split_lines('a 1\r\nb 2\rc 3\nd 4') == ['a 1', 'b 2', 'c 3', 'd 4']
  assert lists.split_lines('a 1\x0cb 2') == ['a 1\x0cb 2']             # str.splitlines would split here


def test_tricky_list_parsed(tmp_path):
  entries, problems = lists.parse_lines(lists.read_lines(_write(tmp_path / 'l.txt', TRICKY)), num_classes=3,
                                        base='/data', labelled=True)
  assert problems == []
  assert [e.name for e in entries] == NAMES and [e.label for e in entries] == LABELS
  assert [e.line for e in entries] == LINES
  assert entries[0].path == '/data/my photo 1.jpg'


def test_labelled_list_errors_name_file_line_and_range(tmp_path):
  bad = _write(tmp_path / 'bad.txt', 'a.jpg 0\r\nmy pic.jpg\r\n')
  with pytest.raises(errors.DataError, match=r"bad\.txt:2: expected .*no label.*got 'my pic\.jpg'"):
    lists.read_labelled_list(bad, num_classes=3)
  bad = _write(tmp_path / 'bad.txt', 'a.jpg 0\n# 9 is a comment, not a label\nb.jpg 3\n')
  with pytest.raises(errors.DataError, match=r'bad\.txt:3: label 3 is out of range 0\.\.2 '
                                             r'\(the labels file has 3 classes\)'):
    lists.read_labelled_list(bad, num_classes=3)
  with pytest.raises(errors.DataError, match=r"--source='/no/such/list': cannot read"):
    lists.read_labelled_list('/no/such/list', num_classes=3, what='--source')


def test_classify_lists_paths_or_labels_decided_by_the_first_entry(tmp_path):
  paths = _write(tmp_path / 'p.txt', 'my photo.jpg\r\n/abs/x 1.png\t\r\n')
  assert [(e.name, e.path, e.label) for e in lists.parse_image_list(paths, num_classes=3)] == [
      ('my photo.jpg', str(tmp_path / 'my photo.jpg'), None), ('/abs/x 1.png', '/abs/x 1.png', None)]
  mixed = _write(tmp_path / 'm.txt', 'a.jpg\nb.jpg 1\n')
  with pytest.raises(errors.DataError, match=r'm\.txt:2: expected "<image path>" like the first entry'):
    lists.parse_image_list(mixed, num_classes=3)
  entries, problems = lists.parse_lines(['a.jpg 0', 'b.jpg', 'c.jpg 5', 'd.jpg 1'], num_classes=3, base='')
  assert [e.name for e in entries] == ['a.jpg', 'd.jpg']
  assert [(p.line, p.reason.split(' (')[0]) for p in problems] == [
      (2, 'expected "<image path> <integer label>" like the first entry'), (3, 'label 5 is out of range 0..2')]


def test_every_user_reads_the_tricky_list_alike(tmp_path):
  """Training source, classify's reader, the New Dataset form and the dataset page's split view."""
  root = tmp_path.resolve()
  listed = _write(root / 'train.txt', TRICKY)
  (root / 'labels.txt').write_text('zero\none\ntwo\n')
  source = sources.open_source(listed)
  assert source.keys == [os.path.join(root, n) for n in NAMES] and source.labels.tolist() == LABELS
  classify = lists.parse_image_list(listed, num_classes=3)
  assert [e.path for e in classify] == source.keys and [e.label for e in classify] == LABELS
  form_errors = {}
  assert forms._check_list(root / 'train.txt', None, [root], 'f', form_errors) == len(NAMES)
  assert form_errors == {}
  uploaded = {}
  assert forms._check_list(TRICKY.encode(), root, [root], 'f', uploaded) == len(NAMES) and uploaded == {}
  assert views.list_lines(listed) == [(i, n, label) for i, (n, label) in enumerate(zip(NAMES, LABELS))]


def test_every_user_refuses_the_same_line(tmp_path):
  root = tmp_path.resolve()
  (root / 'labels.txt').write_text('zero\none\ntwo\n')
  listed = _write(root / 'train.txt', 'a b.jpg 0\r\n\r\nmy pic.jpg\r\nc.jpg 1\r\n')
  with pytest.raises(errors.DataError, match=r'train\.txt:3: expected "<image path> <integer label>"'):
    sources.open_source(listed)
  with pytest.raises(errors.DataError, match=r'train\.txt:3: expected "<image path> <integer label>"'):
    lists.parse_image_list(listed, num_classes=3)
  form_errors = {}
  forms._check_list(root / 'train.txt', None, [root], 'f', form_errors)
  assert form_errors['f'].startswith('line 3: expected "<image path> <integer label>"')
  assert "got 'my pic.jpg'" in form_errors['f']
  assert [name for _, name, _ in views.list_lines(listed)] == ['a b.jpg', 'c.jpg']   # the view leaves it out
  # The label range: the source and classify refuse it; the form leaves it to prepare (no labels read).
  listed = _write(root / 'train.txt', 'a.jpg 0\nb.jpg 3\n')
  with pytest.raises(errors.DataError, match=r'train\.txt:2: label 3 is out of range 0\.\.2'):
    sources.open_source(listed)
  with pytest.raises(errors.DataError, match=r'train\.txt:2: label 3 is out of range 0\.\.2'):
    lists.parse_image_list(listed, num_classes=3)
