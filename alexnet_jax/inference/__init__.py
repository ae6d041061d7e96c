"""Inference from a trained run or an exported bundle: load, classify, export, visualize.

``alexnet_jax.inference.load`` (and ``alexnet_jax.load``) and the names below are the interface for users'
code; they live in ``inference/model.py``. The package also holds what is built on a loaded model:
``bundle`` (what a run or bundle holds, checked), ``classification`` (lists of images and their
reports), ``exporting`` (the ``export`` command's library) and ``visualization`` (filters and activations).
"""

from alexnet_jax.inference.bundle import BundleError
from alexnet_jax.inference.bundle import ModelFiles
from alexnet_jax.inference.bundle import read_model_files
from alexnet_jax.inference.model import DEFAULT_LAYOUT
from alexnet_jax.inference.model import describe
from alexnet_jax.inference.model import load
from alexnet_jax.inference.model import load_from_files
from alexnet_jax.inference.model import Model
from alexnet_jax.inference.model import place_params
from alexnet_jax.inference.model import Prediction
from alexnet_jax.inference.model import resolve_layout

__all__ = ['BundleError', 'DEFAULT_LAYOUT', 'Model', 'ModelFiles', 'Prediction', 'describe', 'load',
           'load_from_files', 'place_params', 'read_model_files', 'resolve_layout']
