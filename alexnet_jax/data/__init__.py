"""Input data for alexnet_jax: DIGITS' dataset options on grain pipelines. Knows nothing of models or devices.

Modules, one job each:

    sources.py     folder / DIGITS list / tfds:NAME[:split] / prepared dir -> a Listing (no decoding): the
                   dispatcher; one module per kind: folders.py, list_source.py, tfds_source.py,
                   prepared_source.py; listing.py holds what they share (Listing, Store, the cache)
    lists.py       the one DIGITS list parser (training lists, classify, the dashboard) and labels.txt
    splits.py      DIGITS' per-class train/val/test split, seeded; min/max per class
    decode.py      bytes -> Pillow image: DIGITS' mode rules, EXIF orientation, draft (reduced) JPEG decoding
    resize.py      DIGITS' resize_image: squash | crop | fill | half_crop, exact arithmetic
    sizes.py       W x H image sizes and the crop (a square, or 0: none), parsed once
    transforms.py  random/center/10 crops, mirror, PCA lighting, mean image/pixel/none (Caffe's order)
    device_augment.py  the same on the accelerator, in the jitted steps (augment_on='device'; imports jax,
                   so it is not imported here)
    loading.py     decode + resize of one record, shared by every consumer
    statistics.py  mean image and RGB covariance of the training split
    contract.py    PreprocessContract (saved with a run) and preprocess_for_eval (eval == classify)
    dataset.py     load_dataset(config.data) -> Dataset
    pipeline.py    train_iterator (resumable, all epochs) and eval_iterator (exact coverage, padded);
                   DevicePrefetch (batches placed ahead by a caller's function, exact resume)
    records.py     the prepared-dataset record format (ArrayRecord)
    preparation.py prepare_dataset: DIGITS' "New Dataset" job (python -m alexnet_jax.prepare)
    reports.py     histogram.png, contact sheets, mean.png
    synthetic.py   generated image folders (tests, benchmarks, demos) and a folder of hostile files

Typical use (the trainer):

    ds = data.load_dataset(config.data, seed=config.seed, metadata_dir=workdir)
    ds.save_metadata(workdir)
    it = data.train_iterator(ds, config.data, global_batch_size=..., seed=config.seed, num_epochs=...)
    for batch in data.eval_iterator(ds, config.data, 'val', global_batch_size=...): ...
"""

from alexnet_jax.data.contract import load_contract
from alexnet_jax.data.contract import preprocess_for_eval
from alexnet_jax.data.contract import PreprocessContract
from alexnet_jax.data.dataset import Dataset
from alexnet_jax.data.dataset import load_dataset
from alexnet_jax.data.decode import IMAGE_EXTENSIONS
from alexnet_jax.data.errors import DataError
from alexnet_jax.data.errors import DecodeError
from alexnet_jax.data.pipeline import DevicePrefetch
from alexnet_jax.data.pipeline import eval_iterator
from alexnet_jax.data.pipeline import steps_per_epoch
from alexnet_jax.data.pipeline import train_dataset
from alexnet_jax.data.pipeline import train_iterator
from alexnet_jax.data.pipeline import wrap_note
from alexnet_jax.data.resize import RESIZE_MODES
from alexnet_jax.data.resize import resize_image
from alexnet_jax.data.sizes import input_hw
from alexnet_jax.data.sizes import parse_image_size
from alexnet_jax.data.sources import display_name
from alexnet_jax.data.transforms import MEAN_MODES

__all__ = [
    'DataError', 'Dataset', 'DecodeError', 'DevicePrefetch', 'IMAGE_EXTENSIONS', 'MEAN_MODES',
    'PreprocessContract', 'RESIZE_MODES', 'display_name', 'eval_iterator', 'input_hw', 'load_contract',
    'load_dataset', 'parse_image_size', 'preprocess_for_eval', 'resize_image', 'steps_per_epoch',
    'train_dataset', 'train_iterator', 'wrap_note',
]
