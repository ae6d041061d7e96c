"""A strict reader of protobuf's text format, enough for Caffe's ``deploy.prototxt`` (no protoc, no Caffe).

The grammar read (protobuf's text format as Caffe's files use it)::

    message := { field }
    field   := NAME ':' scalar | NAME [':'] '{' message '}'     (also '<' message '>')
    scalar  := number | "string" | 'string' | IDENTIFIER         (adjacent strings are joined)

``#`` starts a comment to the end of the line; fields may be separated by ``,`` or ``;``. Every field may
repeat, so a message is parsed into a ``Message``: a dict of name -> list of values, in file order, each
value a ``str`` (a quoted string, escapes decoded), an ``int``/``float``, an ``Identifier`` (enums and
``true``/``false``: ``MAX``, ``ACROSS_CHANNELS``, ``CONVOLUTION``) or a nested ``Message``. Field names are
not checked against caffe.proto here; the importer reads the fields it needs and refuses what it cannot
map. A syntax error is a ``WeightsError`` naming the file, the line and what was expected.
"""

from __future__ import annotations

import os
import re
from typing import Any

from alexnet_jax.inference.importers.torch_files import WeightsError

_TOKEN = re.compile(r'''
    (?P<space>[ \t\r\n]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)[fF]?(?![A-Za-z_]))
  | (?P<name>[-]?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[:{}<>,;\[\]])
''', re.VERBOSE)
_ESCAPES = {'n': '\n', 't': '\t', 'r': '\r', '\\': '\\', '"': '"', "'": "'", '0': '\0'}
CLOSE = {'{': '}', '<': '>'}


class Identifier(str):
  """An unquoted word in a value position: an enum value (``MAX``) or a boolean (``true``)."""


class Message(dict):
  """name -> [values] of one text-format message (see the module docstring)."""

  def get_one(self, name: str, default: Any = None) -> Any:
    """The field's last value (protobuf's rule for a repeated singular field), or ``default``."""
    values = self.get(name)
    return values[-1] if values else default

  def get_all(self, name: str) -> list:
    return list(self.get(name, ()))


def _unquote(token: str) -> str:
  body, out, i = token[1:-1], [], 0
  while i < len(body):
    ch = body[i]
    if ch == '\\' and i + 1 < len(body):
      nxt = body[i + 1]
      if nxt in _ESCAPES:
        out.append(_ESCAPES[nxt])
        i += 2
        continue
      if nxt.isdigit():                      # octal escape, as C++ protobuf writes bytes
        digits = re.match(r'[0-7]{1,3}', body[i + 1:]).group(0)
        out.append(chr(int(digits, 8)))
        i += 1 + len(digits)
        continue
    out.append(ch)
    i += 1
  return ''.join(out)


def _tokens(text: str, source: str) -> list[tuple[str, str, int]]:
  out, pos, line = [], 0, 1
  while pos < len(text):
    match = _TOKEN.match(text, pos)
    if match is None:
      raise WeightsError(f'{source}, line {line}: unexpected {text[pos:pos + 20]!r}; not a prototxt '
                         f'(protobuf text format) file')
    kind = match.lastgroup
    if kind != 'space':
      out.append((kind, match.group(0), line))
    line += match.group(0).count('\n')
    pos = match.end()
  return out


def _scalar(kind: str, token: str):
  if kind == 'string':
    return _unquote(token)
  if kind == 'number':
    token = token.rstrip('fF')
    try:
      return int(token)
    except ValueError:
      return float(token)
  lowered = token.lower().lstrip('-')
  if lowered in ('inf', 'infinity', 'nan'):
    return float(token)
  return Identifier(token)


def parse(text: str, source: str = '<prototxt>') -> Message:
  """The top-level message of ``text`` (see the module docstring)."""
  tokens = _tokens(text, source)
  pos = 0

  def fail(what: str):
    line = tokens[min(pos, len(tokens) - 1)][2] if tokens else 1
    got = repr(tokens[pos][1]) if pos < len(tokens) else 'the end of the file'
    raise WeightsError(f'{source}, line {line}: expected {what}, found {got}')

  def message(close: str | None) -> Message:
    nonlocal pos
    msg = Message()
    while True:
      if pos >= len(tokens):
        if close is None:
          return msg
        fail(f'{close!r} closing a message')
      kind, token, _ = tokens[pos]
      if close is not None and token == close and kind == 'punct':
        pos += 1
        return msg
      if kind == 'punct' and token in ',;':
        pos += 1
        continue
      if kind != 'name':
        fail('a field name')
      name = token
      pos += 1
      colon = pos < len(tokens) and tokens[pos][1] == ':'
      if colon:
        pos += 1
      if pos < len(tokens) and tokens[pos][1] in CLOSE and tokens[pos][0] == 'punct':
        opener = tokens[pos][1]
        pos += 1
        msg.setdefault(name, []).append(message(CLOSE[opener]))
        continue
      if not colon:
        fail(f"':' or '{{' after {name!r}")
      if pos < len(tokens) and tokens[pos][1] == '[':   # a list of values: dim: [1, 3, 227, 227]
        pos += 1
        while pos < len(tokens) and tokens[pos][1] != ']':
          if tokens[pos][1] == ',':
            pos += 1
            continue
          if tokens[pos][0] not in ('string', 'number', 'name'):
            fail(f'a value in the list of {name!r}')
          msg.setdefault(name, []).append(_scalar(*tokens[pos][:2]))
          pos += 1
        if pos >= len(tokens):
          fail("']'")
        pos += 1
        continue
      if pos >= len(tokens) or tokens[pos][0] not in ('string', 'number', 'name'):
        fail(f'a value for {name!r}')
      kind, token, _ = tokens[pos]
      pos += 1
      value = _scalar(kind, token)
      while kind == 'string' and pos < len(tokens) and tokens[pos][0] == 'string':
        value += _unquote(tokens[pos][1])        # "a" "b" is "ab", as in C
        pos += 1
      msg.setdefault(name, []).append(value)

  return message(None)


def read(path: str) -> Message:
  """Parses the prototxt file ``path``."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file')
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except UnicodeDecodeError:
    raise WeightsError(f'{path} is not a prototxt (text) file: it is not UTF-8 text') from None
  return parse(text, path)


__all__ = ['Identifier', 'Message', 'parse', 'read']
