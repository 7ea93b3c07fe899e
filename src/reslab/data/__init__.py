"""Data sets as one uint8 tensor, read from class folders or the official CIFAR formats, cached,
and served in fast, reproducible, resumable augmented batches.

* :func:`load_dataset` (``load.py``): a split of a data set at a path, through the cache
  (``cache.py``), from class folders (``readers.py``) or the official CIFAR files (``cifar.py``),
  downloading CIFAR-10/100 if asked (``download.py``);
* :class:`ImageDataset`, :func:`balanced_subset`, :func:`split_validation`, :func:`channel_stats`
  (``dataset.py``);
* :class:`BatchLoader` (``loader.py``): batches with whole-batch augmentation (``augment.py``).
"""

from reslab.data.cache import default_cache_dir
from reslab.data.dataset import ImageDataset, balanced_subset, channel_stats, split_validation
from reslab.data.download import download_cifar
from reslab.data.load import load_dataset
from reslab.data.loader import BatchLoader

__all__ = ["BatchLoader", "ImageDataset", "balanced_subset", "channel_stats", "default_cache_dir", "download_cifar",
           "load_dataset", "split_validation"]
