r"""``python -m benchmarks.compare_torch``: our ``alexnet_owt`` against the same network in PyTorch.

    python -m benchmarks.compare_torch --batch=32 --dtype=float32 --steps=7 [--xla=default,tuned] \
        [--width=1.0] [--image_size=224] [--json=PATH]

``--xla`` names option sets of ``common.XLA_OPTIONS``, each optionally edited by levers of
``common.XLA_LEVERS`` (``--xla=tuned,tuned+sched_memory,tuned+ynn_no_reduce+fast_runtime``): every set
is compiled in this process and timed round-robin with the others. An option this jaxlib does not know is
left out (the report's ``xla_options_dropped``), never passed.

PyTorch is optional (``pip install torch==2.13.0`` installs a CPU build here); without it only our side
runs. The PyTorch network is built from the same channel table (``alexnet_owt.OWT_CHANNELS``) and starts
from *our* initial weights, converted (HWIO -> OIHW kernels, fc6's rows reordered from our NHWC flatten
to PyTorch's NCHW flatten); before timing, the eval logits of both are compared on the benchmark batch, so
the two really are one network. Training is the same on both sides: softmax cross-entropy, SGD lr 0.01
momentum 0.9, dropout 0.5 before fc6 and fc7. PyTorch runs eager, ``channels_last``, with
``torch.set_num_threads(cores)``; ``--dtype=bfloat16`` means our bfloat16 compute with float32 parameters
and PyTorch's ``autocast(bfloat16)``, the like-for-like mixed precision.

All programs are timed **round-robin, one call each per round** (train and inference of every ``--xla``
option set, and PyTorch's); the ratios are the medians of the per-round ratios ``our images/s /
PyTorch's``. PyTorch runs in this process (``--torch_process=same``: both sides share its malloc
settings, see ``alexnet_jax/runtime/host_memory.py``) or in a fresh process of its own with glibc's defaults
(``--torch_process=own``: each framework as its users run it), still called round-robin with ours.

On a busy host PyTorch's OpenMP threads suffer far more than XLA's thread pool: they spin at barriers
while a sibling thread is descheduled (measured here at load 6 on 2 cores: a tiny train step took 640 ms
on 2 threads, 2-30 ms on 1). Such ratios flatter us; read them only with the ``CPU share now`` figure of
the header near 1, or compare one core each: ``taskset -c 0 python -m benchmarks.compare_torch
--threads=1``.
"""

from __future__ import annotations

import functools
from typing import Sequence

from absl import flags

from alexnet_jax.runtime import host_memory
from alexnet_jax.models import layers as model_layers
from benchmarks import common
from benchmarks import torch_alexnet

FLAGS = flags.FLAGS


def benchmark(*, batch: int = 32, dtype: str = 'float32', width: float = 1.0, image_size: int = 224,
              num_classes: int = 1000, steps: int = 7, warmup: int = 2,
              xla: Sequence[str] = ('default', 'tuned'), modes: Sequence[str] = ('train', 'infer'),
              threads: int = 0, use_torch: bool = True, max_pools: Sequence[str] = ('model',),
              torch_process: str = 'same', log=print) -> dict:
  """Runs the comparison and returns the report (what ``--json`` writes)."""
  import jax
  import ml_collections
  import numpy as np
  import optax
  from alexnet_jax import models
  from alexnet_jax.parallel import compare
  from alexnet_jax.parallel import layouts as layouts_lib
  from alexnet_jax.parallel import step as step_lib

  device = jax.devices()[0]
  network = models.build(ml_collections.ConfigDict(dict(
      name='alexnet_owt', width=width, dropout=0.5, lrn='none', bias_init='paper', dtype=dtype)),
      num_classes)
  layout = layouts_lib.resolve('single', network, num_devices=1)
  mesh = layout.make_mesh()
  tx = optax.sgd(0.01, momentum=0.9)
  holder = {'state': step_lib.create_train_state(network, layout, mesh, tx, seed=0,
                                                 image_shape=(image_size, image_size, 3))}
  images_np, labels_np = compare.example_batch(batch, image_size, 3, num_classes)
  images, labels = jax.device_put(images_np), jax.device_put(labels_np)
  initial_params = jax.tree.map(np.asarray, holder['state'].params)
  eval_step = step_lib.make_eval_step(network, layout, mesh)

  calls, flops = {}, {}
  from alexnet_jax.models import layers as layers_lib
  model_pool = layers_lib.max_pool
  for pool, xla_name in [(p, x) for p in max_pools for x in xla]:
    options = common.xla_options(xla_name, device.platform)
    dropped = common.xla_options_dropped(xla_name, device.platform)
    if dropped:
      log(f'--xla={xla_name}: this jaxlib does not know {", ".join(dropped)}; compiled without')
    name = f'jax_{xla_name}' + ('' if pool == 'model' else f'+{pool}')
    # A what-if for the model's max-pool: swapped in while tracing only (the model code is unchanged).
    layers_lib.max_pool = {'slices': slice_max_pool, 'reduce_window': reduce_window_max_pool}.get(
        pool, model_pool)
    try:
      with jax.set_mesh(mesh):
        if 'train' in modes:
          # A fresh step per variant: jit caches traces by function, so a reused one would ignore the swap.
          fresh = step_lib.make_train_step(network, layout, mesh, tx, donate=True)
          compiled = fresh.jitted.lower(
              holder['state'], {'image': images, 'label': labels}).compile(compiler_options=options)
          flops[f'{name}/train'] = common.cost_flops(compiled)

          def train(compiled=compiled):
            with jax.set_mesh(mesh):
              holder['state'], metrics = compiled(holder['state'], {'image': images, 'label': labels})
            jax.block_until_ready((holder['state'], metrics))
          calls[f'{name}/train'] = train
        if 'infer' in modes:
          fresh = step_lib.make_eval_step(network, layout, mesh)
          compiled = fresh.jitted.lower(holder['state'].params, images).compile(
              compiler_options=options)
          flops[f'{name}/infer'] = common.cost_flops(compiled)

          def infer(compiled=compiled):
            with jax.set_mesh(mesh):
              jax.block_until_ready(compiled(holder['state'].params, images))
          calls[f'{name}/infer'] = infer
    finally:
      layers_lib.max_pool = model_pool
    log(f'compiled ours: {name}')

  logits_check = None
  torch_info = None
  if use_torch and torch_alexnet.torch_available():
    spec = dict(num_classes=num_classes, width=width, image_size=image_size, dtype=dtype,
                threads=threads or common.usable_cores(), params=initial_params, images=images_np,
                labels=labels_np)
    theirs_programs = (torch_alexnet.TorchPrograms(**spec) if torch_process == 'same' else
                       torch_alexnet.TorchServer(spec))
    # The same network: eval logits from the same weights on the same batch.
    theirs = theirs_programs.logits()
    ours = np.asarray(eval_step(jax.tree.map(jax.numpy.asarray, initial_params), images_np))
    logits_check = {'max_abs_diff': float(np.max(np.abs(theirs - ours))),
                    'max_abs_logit': float(np.max(np.abs(ours)))}
    log(f'eval logits, PyTorch vs ours: max |diff| {logits_check["max_abs_diff"]:.3g} '
        f'(max |logit| {logits_check["max_abs_logit"]:.3g})')
    for mode in modes:
      calls[f'torch/{mode}'] = functools.partial(theirs_programs.call, mode)
    torch_info = dict(theirs_programs.info(), process=torch_process)

  load_before = common.load_average()
  timings = common.interleave(calls, reps=steps, warmup=warmup,
                              on_round=lambda r: log(f'round {r + 1}/{steps}, load {common.load_average()[0]}'))
  load_after = common.load_average()
  peak, peak_source = common.peak(device, dtype)

  results = {}
  for key, timing in timings.items():
    side, mode = key.split('/')
    f = flops.get(key) or flops.get(f'jax_{xla[0]}/{mode}') or next(
        (v for k, v in flops.items() if k.endswith('/' + mode)), None)   # PyTorch does the same FLOPs as we do
    results[key] = {'images_per_s': timing.rate(batch), 'images_per_s_min': batch / timing.max,
                    'images_per_s_max': batch / timing.min, 'time': timing.to_json(),
                    'flops_per_image': f / batch if f else None,
                    'mfu': f / timing.median / peak if f and peak else None}
    if 'torch/' + mode in timings and side != 'torch':
      results[key]['ratio_to_torch'] = common.paired_ratio(timing, timings['torch/' + mode])
    first = f'jax_{xla[0]}/{mode}'   # the baseline of an A/B of option sets: the first --xla
    if side != 'torch' and first in timings and len(timings) > 1:
      results[key]['ratio_to_first_xla'] = common.paired_ratio(timing, timings[first])
      results[key]['rounds_faster_than_first_xla'] = sum(
          t < b for t, b in zip(timing.seconds, timings[first].seconds)) / len(timing.seconds)
  return {
      'benchmark': 'compare_torch',
      'config': {'batch': batch, 'dtype': dtype, 'width': width, 'image_size': image_size,
                 'num_classes': num_classes, 'steps': steps, 'warmup': warmup, 'xla': list(xla),
                 'modes': list(modes),
                 'xla_options': {x: common.xla_options(x, device.platform) for x in xla},
                 'xla_options_dropped': {x: common.xla_options_dropped(x, device.platform) for x in xla}},
      'torch': torch_info, 'logits_check': logits_check,
      'host_memory_retained': host_memory.is_retaining(),
      'peak_flops': peak, 'peak_source': peak_source,
      'machine': common.machine_info(),
      'load_average_during': [load_before, load_after],
      'results': results,
  }


# Layers of alexnet_owt at full width: (name, input side, in channels, out channels, kernel, stride, pad).
OWT_LAYERS = (('conv1', 224, 3, 64, 11, 4, 2), ('conv2', 27, 64, 192, 5, 1, 2),
              ('conv3', 13, 192, 384, 3, 1, 1), ('conv4', 13, 384, 256, 3, 1, 1),
              ('conv5', 13, 256, 256, 3, 1, 1))
OWT_POOLS = (('pool1', 55, 64), ('pool2', 27, 192), ('pool5', 13, 256))
OWT_DENSE = (('fc6', 9216, 4096), ('fc7', 4096, 4096), ('fc8', 4096, 1000))


# Max-pool as window x window strided slices, differentiated by autodiff (the model's own max-pool has the
# same forward and a hand-written backward pass).
slice_max_pool = model_layers.slice_max_pool


def reduce_window_max_pool(x, window: int = 3, stride: int = 2):
  """Max-pool as XLA's ``reduce_window`` (``nn.max_pool``; its gradient is a ``select_and_scatter``)."""
  import flax.linen as nn
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding='VALID')


def layer_breakdown(*, batch: int = 32, steps: int = 5, warmup: int = 2,
                    xla: Sequence[str] = ('default', 'tuned', 'eigen'), use_torch: bool = True,
                    log=print) -> dict:
  """Forward + backward of each layer of alexnet_owt alone (full width, float32), ours vs PyTorch's.

  Convolutions: output, input gradient (not for conv1, whose input gradient training never needs) and
  weight gradient; pools: forward and input gradient, the model's own (``layers.max_pool``) and, as
  what-ifs, XLA's ``reduce_window`` (what ``nn.max_pool`` lowers to, its gradient a ``select_and_scatter``)
  and 9 strided slices under autodiff; dense layers: output and
  both gradients. Everything is timed round-robin in one process; times in ms per call.
  """
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  import numpy as np

  device = jax.devices()[0]
  rng = np.random.default_rng(0)
  calls, flops = {}, {}

  def add_jax(name, fn, args, n_flops):
    jitted = jax.jit(fn)
    for x in xla:
      compiled = jitted.lower(*args).compile(compiler_options=common.xla_options(x, device.platform))
      calls[f'{name}|jax_{x}'] = lambda c=compiled: jax.block_until_ready(c(*args))
    flops[name] = n_flops

  for name, side, cin, cout, k, stride, pad in OWT_LAYERS:
    out = (side + 2 * pad - k) // stride + 1
    x = jnp.asarray(rng.normal(size=(batch, side, side, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.01, jnp.float32)
    g = jnp.asarray(rng.normal(size=(batch, out, out, cout)), jnp.float32)
    conv = lambda x, w, s=stride, p=pad: jax.lax.conv_general_dilated(
        x, w, (s, s), [(p, p), (p, p)], dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if name == 'conv1':
      fn = lambda x, w, g, conv=conv: (conv(x, w), jax.vjp(lambda w: conv(x, w), w)[1](g))
    else:
      fn = lambda x, w, g, conv=conv: (conv(x, w), jax.vjp(conv, x, w)[1](g))
    passes = 2 if name == 'conv1' else 3
    add_jax(name, fn, (x, w, g), passes * 2 * batch * out * out * k * k * cin * cout)
  for name, side, c in OWT_POOLS:
    x = jnp.asarray(rng.normal(size=(batch, side, side, c)), jnp.float32)
    out = (side - 3) // 2 + 1
    g = jnp.asarray(rng.normal(size=(batch, out, out, c)), jnp.float32)
    reduce_window = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
    add_jax(name, lambda x, g: jax.vjp(model_layers.max_pool, x)[1](g), (x, g), None)
    add_jax(name + ' reduce_window', lambda x, g, f=reduce_window: jax.vjp(f, x)[1](g), (x, g), None)
    add_jax(name + ' slices', lambda x, g: jax.vjp(slice_max_pool, x)[1](g), (x, g), None)
  for name, fin, fout in OWT_DENSE:
    x = jnp.asarray(rng.normal(size=(batch, fin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(fin, fout)) * 0.01, jnp.float32)
    g = jnp.asarray(rng.normal(size=(batch, fout)), jnp.float32)
    add_jax(name, lambda x, w, g: (x @ w, jax.vjp(jnp.matmul, x, w)[1](g)), (x, w, g),
            3 * 2 * batch * fin * fout)
  log(f'compiled {len(calls)} layer programs')

  if use_torch and torch_alexnet.torch_available():
    import torch
    torch.set_num_threads(common.usable_cores())
    cl = torch.channels_last
    for name, side, cin, cout, k, stride, pad in OWT_LAYERS:
      out = (side + 2 * pad - k) // stride + 1
      layer = torch.nn.Conv2d(cin, cout, k, stride, pad).to(memory_format=cl)
      x = torch.randn(batch, cin, side, side).contiguous(memory_format=cl)
      x.requires_grad_(name != 'conv1')
      g = torch.randn(batch, cout, out, out).contiguous(memory_format=cl)
      calls[f'{name}|torch'] = lambda layer=layer, x=x, g=g: layer(x).backward(g)
    for name, side, c in OWT_POOLS:
      x = torch.randn(batch, c, side, side).contiguous(memory_format=cl).requires_grad_()
      out = (side - 3) // 2 + 1
      g = torch.randn(batch, c, out, out).contiguous(memory_format=cl)
      calls[f'{name}|torch'] = lambda x=x, g=g: torch.nn.functional.max_pool2d(
          x, 3, 2).backward(g)
    for name, fin, fout in OWT_DENSE:
      layer = torch.nn.Linear(fin, fout)
      x = torch.randn(batch, fin, requires_grad=True)
      g = torch.randn(batch, fout)
      calls[f'{name}|torch'] = lambda layer=layer, x=x, g=g: layer(x).backward(g)

  timings = common.interleave(calls, reps=steps, warmup=warmup)
  table: dict[str, dict] = {}
  for key, timing in timings.items():
    layer, program = key.split('|')
    row = table.setdefault(layer, {'gflop': flops.get(layer) and flops[layer] / 1e9})
    row[program] = timing.median * 1e3
  return {'batch': batch, 'xla': list(xla), 'ms': table, 'machine': common.machine_info()}


def format_breakdown(result: dict) -> str:
  programs = [f'jax_{x}' for x in result['xla']] + ['torch']
  rows = []
  totals = dict.fromkeys(programs, 0.0)
  for layer, row in result['ms'].items():
    best = min(row.get(p, float('inf')) for p in programs[:-1])
    rows.append([layer, row['gflop'], *[row.get(p) for p in programs],
                 best / row['torch'] if 'torch' in row else None])
    if not layer.endswith((' slices', ' reduce_window')):   # what-ifs, not in the model
      for p in programs:
        totals[p] += row.get(p) or 0.0
  rows.append(['total (the model\'s layers)', None, *[totals[p] or None for p in programs], None])
  return '\n'.join([
      f'per-layer forward+backward of alexnet_owt, batch {result["batch"]}, float32, ms per call '
      '(round-robin medians)', common.describe(result['machine']),
      common.format_table(['layer', 'GFLOP', *[p + ' ms' for p in programs], 'best jax/torch time'], rows)])


def format_report(report: dict) -> str:
  cfg = report['config']
  rows = []
  for key, r in report['results'].items():
    side, mode = key.split('/')
    rows.append([side, mode, r['images_per_s'], f'{r["images_per_s_min"]:.1f}-{r["images_per_s_max"]:.1f}',
                 r.get('ratio_to_torch'), r.get('ratio_to_first_xla'),
                 None if r['mfu'] is None else 100 * r['mfu']])
  lines = [f'alexnet_owt width {cfg["width"]}, batch {cfg["batch"]}, {cfg["image_size"]}px, {cfg["dtype"]}; '
           f'{cfg["steps"]} timed calls each, round-robin',
           common.describe(report['machine'])]
  if report['torch']:
    t = report['torch']
    where = ('in this process' if t['process'] == 'same' else
             f'in its own process ({"GLIBC_TUNABLES=" + t["glibc_tunables"] if t.get("glibc_tunables") else "glibc malloc defaults"})')
    lines.append(f'torch {t["version"]}, {t["threads"]} threads, {t["memory_format"]}'
                 f'{", autocast bf16" if t["autocast"] else ""}, {where}; eval logits max |diff| vs ours '
                 f'{report["logits_check"]["max_abs_diff"]:.3g}')
  else:
    lines.append('PyTorch is not installed: our side only (pip install torch==2.13.0)')
  lines.append('our process keeps freed memory (alexnet_jax/runtime/host_memory.py)' if report['host_memory_retained']
               else 'our process runs with glibc malloc defaults (--noretain_host_memory)')
  for xla_name, dropped in (cfg.get('xla_options_dropped') or {}).items():
    if dropped:
      lines.append(f'--xla={xla_name}: left out (this jaxlib does not know them): {", ".join(dropped)}')
  lines.append(common.format_table(['program', 'mode', 'img/s', 'min-max', 'ours/torch',
                                    f'vs jax_{cfg["xla"][0]}', 'MFU %'], rows))
  lines.append(f'load average before/after timing: {report["load_average_during"][0]} / '
               f'{report["load_average_during"][1]}')
  return '\n'.join(lines)


def define_flags() -> None:
  """The command-line flags (defined only when run as a command, so modules can be imported together)."""
  flags.DEFINE_integer('batch', 32, 'Batch size.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
  flags.DEFINE_float('width', 1.0, 'Channel multiplier.')
  flags.DEFINE_integer('image_size', 224, 'Input height and width.')
  flags.DEFINE_integer('num_classes', 1000, 'Classes.')
  flags.DEFINE_integer('steps', 7, 'Timed calls per program.')
  flags.DEFINE_integer('warmup', 2, 'Untimed calls per program first.')
  flags.DEFINE_list('xla', ['default', 'tuned'], f'Our XLA option sets ({", ".join(common.XLA_OPTIONS)}), '
                    f'each optionally edited by +lever ({", ".join(common.XLA_LEVERS)}), e.g. '
                    'tuned+sched_memory+ynn_no_reduce; options this jaxlib lacks are left out.')
  flags.DEFINE_list('modes', ['train', 'infer'], 'train and/or infer.')
  flags.DEFINE_integer('threads', 0, "PyTorch's intra-op threads (0: the usable cores).")
  flags.DEFINE_string('json', None, 'Write the report as JSON here.')
  flags.DEFINE_enum('torch_process', 'same', ['same', 'own'],
                    "Where PyTorch runs: 'same' = in this process (both sides get this process's malloc "
                    "settings, see --retain_host_memory); 'own' = a fresh process of its own with glibc's "
                    "defaults, as PyTorch users run it, still called round-robin with ours.")
  flags.DEFINE_list('max_pools', ['model'], "What-if: also time ours with max-pool as 'reduce_window' "
                    "(nn.max_pool, swapped in while tracing) or 'slices' (9 strided slices under autodiff) "
                    "beside the model's own ('model': the slices with a hand-written backward pass).")
  flags.DEFINE_bool('breakdown', False, 'Instead: time each layer alone, ours (every --xla) vs PyTorch.')


def main(argv):
  del argv
  from alexnet_jax.runtime.devices import ensure_devices
  ensure_devices(1)
  if FLAGS.breakdown:
    result = layer_breakdown(batch=FLAGS.batch, steps=FLAGS.steps, warmup=FLAGS.warmup, xla=FLAGS.xla)
    print(format_breakdown(result))
    if FLAGS.json:
      common.write_json(FLAGS.json, result)
    return
  report = benchmark(batch=FLAGS.batch, dtype=FLAGS.dtype, width=FLAGS.width, image_size=FLAGS.image_size,
                     num_classes=FLAGS.num_classes, steps=FLAGS.steps, warmup=FLAGS.warmup, xla=FLAGS.xla,
                     modes=FLAGS.modes, threads=FLAGS.threads, max_pools=FLAGS.max_pools,
                     torch_process=FLAGS.torch_process)
  common.print_and_save(format_report(report), report, FLAGS.json)


if __name__ == '__main__':
  from alexnet_jax.runtime import cli
  define_flags()
  cli.run(main)
