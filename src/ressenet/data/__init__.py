"""Data for Res-SE-Net experiments (arXiv:1902.06066): CIFAR-10/100 in their official formats, image folders,
synthetic data, verified downloads, and on-device augmentation loaders.

Typical use::

    from ressenet.data import load_datasets, normalization, train_val_split, TrainLoader, eval_batches

    splits = load_datasets("cifar10", "./data", download=True)
    train, val = train_val_split(splits["train"], val_size=5000, seed=0)
    mean, std = normalization("cifar10")  # the paper's constants
    loader = TrainLoader(train, 128, mean=mean, std=std, seed=0, device="cuda")
    x, y = loader.next()
"""
from ressenet.data.base import DataError, ImageDataset, channel_stats, train_val_split
from ressenet.data.cifar import load_pickle, read_binary_batch
from ressenet.data.constants import DATASETS
from ressenet.data.datasets import dataset_info, format_info, load_datasets, load_split, normalization
from ressenet.data.fetch import download
from ressenet.data.loader import TrainLoader, eval_batches
from ressenet.files import default_cache_dir

__all__ = [
    "DATASETS",
    "DataError",
    "ImageDataset",
    "TrainLoader",
    "channel_stats",
    "dataset_info",
    "default_cache_dir",
    "download",
    "eval_batches",
    "format_info",
    "load_datasets",
    "load_pickle",
    "load_split",
    "normalization",
    "read_binary_batch",
    "train_val_split",
]
