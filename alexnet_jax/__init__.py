"""alexnet_jax: AlexNet (Krizhevsky et al., 2012) in JAX, two towers on a device mesh, and DIGITS' workflow.

The one function at the package level is ``load``, for inference from a notebook or a script:

    import alexnet_jax
    model = alexnet_jax.load('runs/demo')            # or an exported 'demo.tar.gz'
    model.predict(['a.jpg', 'b.jpg'], top_k=5)

Importing the package imports nothing else (no JAX), so ``python -m alexnet_jax.<tool>`` entry points
can still choose their devices first.
"""


def load(path, **kwargs):
  """``alexnet_jax.inference.load``: a trained run or bundle, ready to classify (see its docstring)."""
  from alexnet_jax import inference
  return inference.load(path, **kwargs)
