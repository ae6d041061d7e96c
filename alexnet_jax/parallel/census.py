"""The communication census: every collective of a compiled step, with its bytes, axis, layer and pass.

It reads the optimized per-device HLO of a compiled function (``compiled.as_text()``), so it reports what
XLA will actually run -- after its combiners have merged small all-reduces into tuples -- rather than
what the program asked for. Each collective is attributed

- to a **mesh axis** by comparing its replica groups with the mesh's 'data' and 'model' groups;
- to a **layer** by the named scopes the code runs under: ``exchange_<layer>`` (the tower exchanges of
  ``parallel/forward.py``), the Flax module path of a parameter (``conv1`` ... ``fc8``; ``head`` is fc8's
  bias), ``loss`` or ``metrics``;
- to a **pass**: ``forward`` (an exchange, or the loss mean), ``backward`` (the transpose of an exchange:
  autodiff turns an all-gather into a reduce-scatter of activation gradients, a psum into a psum), or
  ``update`` (a parameter gradient reduced across data replicas, and the metrics of the step).

``bytes`` is the per-device shard that takes part: the part of an all-gather's result that a device
contributes, the part of a reduce-scatter's result that it keeps, an all-reduce's buffer. So an exchange
and its transpose report the same bytes. Collectives whose replica groups all have a single member (XLA
keeps some over axes of size 1) move nothing and are left out.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import jax
import numpy as np
from jax.sharding import Mesh

COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'collective-permute', 'all-to-all')
DTYPE_BYTES = {'f64': 8, 'f32': 4, 'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4, 's64': 8, 'u64': 8,
               's8': 1, 'u8': 1, 'pred': 1, 's16': 2, 'u16': 2}

_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+'
                    r'(?P<op>' + '|'.join(COLLECTIVES) + r')(?:-start)?\((?P<rest>.*)$')
_GTE = re.compile(r'^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(?P<type>\S+)\s+get-tuple-element\(%(?P<src>[\w.\-]+)\),'
                  r'\s*index=(?P<index>\d+)(?P<rest>.*)$')
_SHAPE = re.compile(r'\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]')
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]*)"')
_LAYER = re.compile(r'/(conv\d+|fc\d+)/')


@dataclasses.dataclass(frozen=True)
class Collective:
  op: str          # all-gather | all-reduce | reduce-scatter | ...
  bytes: int       # per-device shard that takes part (see module docstring)
  layer: str       # conv3 | fc6 | ... | loss | metrics
  axis: str        # data | model | data+model | other
  pass_: str       # forward | backward | update
  shape: str       # the buffer, e.g. f32[8,13,13,128]
  name: str        # the HLO instruction

  def to_json(self) -> dict:
    return {'op': self.op, 'bytes': self.bytes, 'layer': self.layer, 'axis': self.axis,
            'pass': self.pass_, 'shape': self.shape, 'hlo': self.name}


def _shapes(type_str: str) -> list[tuple[str, tuple[int, ...]]]:
  return [(m['dtype'], tuple(int(d) for d in m['dims'].split(',') if d))
          for m in _SHAPE.finditer(type_str)]


def _nbytes(dtype: str, dims: tuple[int, ...]) -> int:
  return DTYPE_BYTES.get(dtype, 4) * math.prod(dims)


def parse_replica_groups(rest: str, num_devices: int) -> list[tuple[int, ...]]:
  """Replica groups in any of the three forms XLA prints.

  ``{{0,1},{2,3}}`` (explicit), ``[2,2]<=[4]`` / ``[2,2]<=[2,2]T(1,0)`` (iota, possibly transposed) and
  ``mesh['axis_0'=2,'axis_1'=1] {'axis_0'}`` (a device mesh and the axes that form each group).
  """
  m = re.search(r'replica_groups=\{(\{[\d,{}\s]*\})\}', rest)
  if m:
    return [tuple(int(x) for x in g.split(',') if x.strip()) for g in re.findall(r'\{([\d,\s]*)\}', m[1])]
  m = re.search(r'replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?', rest)
  if m:
    group_shape = [int(x) for x in m[1].split(',')]
    ids = np.arange(math.prod(int(x) for x in m[2].split(','))).reshape([int(x) for x in m[2].split(',')])
    if m[3]:
      ids = ids.transpose([int(x) for x in m[3].split(',')])
    return [tuple(int(v) for v in row) for row in ids.reshape(group_shape[0], -1)]
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]"
                r"(?:,\s*device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?\s*\{([^}]*)\}", rest)
  if m:
    axes = [(a, int(s)) for a, s in re.findall(r"'([^']+)'=(\d+)", m[1])]
    sizes = [s for _, s in axes]
    ids = np.arange(math.prod(sizes))
    if m[2]:  # the mesh's device order, itself an iota (possibly transposed)
      ids = ids.reshape([int(x) for x in m[2].split(',')])
      if m[3]:
        ids = ids.transpose([int(x) for x in m[3].split(',')])
    ids = ids.reshape(sizes)
    selected = re.findall(r"'([^']+)'", m[4])
    keep = [i for i, (a, _) in enumerate(axes) if a not in selected]
    sel = [i for i, (a, _) in enumerate(axes) if a in selected]
    ids = ids.transpose(keep + sel).reshape(-1, math.prod(sizes[i] for i in sel) if sel else 1)
    return [tuple(int(v) for v in row) for row in ids]
  if 'replica_groups={}' in rest or 'replica_groups=' not in rest:
    return [tuple(range(num_devices))]
  raise ValueError(f'unrecognized replica groups in: {rest[:200]}')


def axis_groups(mesh: Mesh) -> dict[str, set[frozenset[int]]]:
  """The replica groups of each mesh axis (and of both), in the logical device ids of compiled HLO."""
  ids = np.arange(mesh.devices.size).reshape(mesh.devices.shape)
  names = mesh.axis_names
  out = {}
  for i, name in enumerate(names):
    moved = np.moveaxis(ids, i, -1).reshape(-1, ids.shape[i])
    out[name] = {frozenset(int(v) for v in row) for row in moved}
  out['+'.join(names)] = {frozenset(int(v) for v in ids.flat)}
  return out


def _axis_of(groups, mesh: Mesh) -> str:
  as_sets = {frozenset(g) for g in groups}
  for name, expected in axis_groups(mesh).items():
    if as_sets == expected:
      return name
  return 'other'


def _attribute(op_name: str, is_param: bool | None = None) -> tuple[str, str]:
  """(layer, pass) from an HLO op_name (and, when known, whether the buffer is parameter-shaped).

  Collectives that XLA's partitioner inserts (compiler-partitioned layouts) carry the op_name of a
  nearby operation, not of an exchange; there ``is_param`` -- the buffer has the shape of a parameter
  or of its shard -- tells a gradient reduction (update) from an activation exchange.
  """
  backward = 'transpose(' in op_name
  if is_param is False and not re.search(r'exchange_|/metrics|loss', op_name):
    m = _LAYER.search(op_name)
    return (m[1] if m else 'other'), 'backward' if backward else 'forward'
  m = re.search(r'exchange_(\w+)', op_name)
  if m:
    return m[1], 'backward' if backward else 'forward'
  if '/metrics/' in op_name or op_name.endswith('/metrics'):
    return 'metrics', 'update'
  if 'loss' in op_name and not backward:
    return 'loss', 'forward'
  m = _LAYER.search(op_name)
  if m:
    return m[1], 'update'
  if '/head/' in op_name or 'head' in op_name:
    return 'fc8', 'update'
  return 'other', 'backward' if backward else 'forward'


def census(hlo_text: str, mesh: Mesh, param_shapes: set[tuple[int, ...]] | None = None
           ) -> list[Collective]:
  """Every non-trivial collective of a compiled program (``compiled.as_text()``) on ``mesh``.

  ``param_shapes`` (the shapes of parameters, per tower and per device shard) sharpens the attribution
  of compiler-inserted collectives (see ``_attribute``).
  """
  lines = hlo_text.splitlines()
  gtes = collections.defaultdict(dict)
  for line in lines:
    g = _GTE.match(line)
    if g:
      name = _OP_NAME.search(g['rest'])
      gtes[g['src']][int(g['index'])] = name['op_name'] if name else ''
  out = []
  for line in lines:
    m = _INSTR.match(line)
    if not m:
      continue
    groups = parse_replica_groups(m['rest'], mesh.devices.size)
    if all(len(g) <= 1 for g in groups):
      continue
    group_size = max(len(g) for g in groups)
    axis = _axis_of(groups, mesh)
    own = _OP_NAME.search(m['rest'])
    own = own['op_name'] if own else ''
    shapes = _shapes(m['type'])
    is_tuple = m['type'].lstrip().startswith('(')
    for i, (dtype, dims) in enumerate(shapes):
      op_name = gtes[m['name']].get(i, own) if is_tuple else own
      nbytes = _nbytes(dtype, dims)
      if m['op'] == 'all-gather':
        nbytes //= group_size
      is_param = None if param_shapes is None else tuple(d for d in dims if d != 1) in param_shapes
      layer, pass_ = _attribute(op_name, is_param)
      shape = f'{dtype}[{",".join(map(str, dims))}]'
      out.append(Collective(m['op'], nbytes, layer, axis, pass_, shape, m['name']))
  return out


def summarize(collectives: list[Collective]) -> dict[tuple[str, str, str], int]:
  """Bytes per (pass, layer, op), for tables and tests."""
  totals = collections.Counter()
  for c in collectives:
    totals[(c.pass_, c.layer, c.op)] += c.bytes
  return dict(totals)


def parameter_shapes(params) -> set[tuple[int, ...]]:
  """Shapes a parameter's buffer can take in a compiled step: whole, per tower, per device shard
  (size-1 dimensions dropped, since XLA's buffers drop or add them freely)."""
  shapes = set()
  for a in jax.tree.leaves(params):
    candidates = [a.shape, a.shape[1:]]
    sharding = getattr(a, 'sharding', None)
    if sharding is not None:
      shard = sharding.shard_shape(a.shape)
      candidates += [shard, shard[1:]]
    for shape in candidates:
      shapes.add(tuple(d for d in shape if d != 1))
  return shapes
