"""Dataset constants: names, class lists, normalisation statistics, archive layouts and checksums.

Kept beside the data code, in one table, so that no other module hard-codes a mean, a URL or an md5. Sources: the CIFAR page (https://www.cs.toronto.edu/~kriz/cifar.html), torchvision's per-file
md5 table, and the Res-SE-Net released code for the paper's normalisation (docs/design.md, arXiv:1902.06066).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SPLITS: tuple[str, ...] = ("train", "test")

DEFAULT_ROOT = "./data"

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

CIFAR100_COARSE_CLASSES: tuple[str, ...] = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)

# The released Res-SE-Net code normalises both datasets with these (docs/design.md). The std differs from
# CIFAR-10's pixel std (0.247, 0.243, 0.261) and its origin is unclear; it is kept because the paper trained with it.
PAPER_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
PAPER_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)

# Per-channel mean and (population) std over all pixels of the official training sets, /255.
_CIFAR10_STATS = ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784))
_CIFAR100_STATS = ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047))


@dataclass(frozen=True)
class DatasetInfo:
    """One row of the dataset registry: what everything else (loaders, config choices, report labels) reads.

    Attributes:
        name: The ``--dataset`` value.
        title: Human name, e.g. "CIFAR-10" (report labels, error messages).
        reader: The loader that reads it, a key of data/datasets.py's ``READERS``: "cifar" (official archives),
            "imagefolder" or "synthetic". A new dataset read by an existing loader needs only its row here.
        classes: The class names when fixed by the dataset (None: read from the files).
        stats: Per-channel (mean, std) of the training pixels, /255 (None: computed from the data when asked).
        downloadable: ``--download`` fetches and verifies the official archive (its ``ARCHIVES`` entries); the
            choices of ``ressenet data download`` and the help of ``--download``.
        lossless: Whether the pixels are the originals (None: depends on the files, recorded per run).
        generated: Made on demand rather than read: its split sizes follow ``data.train_limit`` and
            ``data.test_limit`` (default the CIFAR sizes, 50,000 and 10,000), so no subset is taken.
    """

    name: str
    title: str
    reader: str
    classes: tuple[str, ...] | None
    stats: tuple[tuple[float, float, float], tuple[float, float, float]] | None
    downloadable: bool
    lossless: bool | None
    generated: bool = False


DATASET_INFO: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("cifar10", "CIFAR-10", "cifar", CIFAR10_CLASSES, _CIFAR10_STATS, True, True),
    DatasetInfo("cifar100", "CIFAR-100", "cifar", CIFAR100_CLASSES, _CIFAR100_STATS, True, True),
    DatasetInfo("imagefolder", "image folder", "imagefolder", None, None, False, None),
    DatasetInfo("synthetic", "synthetic data", "synthetic", None, None, False, True, generated=True),
)}
# Derived views, kept for the code that reads them.
DATASETS: tuple[str, ...] = tuple(DATASET_INFO)
DATASET_STATS = {k: d.stats for k, d in DATASET_INFO.items() if d.stats is not None}
NUM_CLASSES: dict[str, int] = {k: len(d.classes) for k, d in DATASET_INFO.items() if d.classes is not None}
DOWNLOADABLE: tuple[str, ...] = tuple(k for k, d in DATASET_INFO.items() if d.downloadable)


def join_names(names: Sequence[str]) -> str:
    """Names for a sentence: ``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(filter(None, (", ".join(names[:-1]), *names[-1:])))

OFFICIAL_URL_BASE = "https://www.cs.toronto.edu/~kriz"
URL_BASE_ENV = "RESSENET_CIFAR_URL_BASE"


@dataclass(frozen=True)
class ArchiveSpec:
    """One official CIFAR archive and the folder it unpacks to.

    Attributes:
        filename: Archive file name on the CIFAR page, e.g. ``cifar-10-python.tar.gz``.
        folder: Top-level folder inside the archive, e.g. ``cifar-10-batches-py``.
        md5: md5 of the archive.
        members: Member file (relative to ``folder``) -> md5, or None where only presence is checked.
        train_files: Members holding the training split, in order.
        test_files: Members holding the test split.
        meta_files: Members holding class names.
    """

    filename: str
    folder: str
    md5: str
    members: dict[str, str | None]
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_files: tuple[str, ...]


# Keyed by (dataset, variant). Tests monkeypatch entries to point at archives they build, whose md5s differ.
ARCHIVES: dict[tuple[str, str], ArchiveSpec] = {
    ("cifar10", "python"): ArchiveSpec(
        filename="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        md5="c58f30108f718f92721af3b95e74349a",
        members={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_files=("batches.meta",),
    ),
    ("cifar10", "binary"): ArchiveSpec(
        filename="cifar-10-binary.tar.gz",
        folder="cifar-10-batches-bin",
        md5="c32a1d4ab5d03f1284b67883e8d87530",
        members={**{f"data_batch_{i}.bin": None for i in range(1, 6)}, "test_batch.bin": None,
                 "batches.meta.txt": None},
        train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        test_files=("test_batch.bin",),
        meta_files=("batches.meta.txt",),
    ),
    ("cifar100", "python"): ArchiveSpec(
        filename="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        members={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        train_files=("train",),
        test_files=("test",),
        meta_files=("meta",),
    ),
    ("cifar100", "binary"): ArchiveSpec(
        filename="cifar-100-binary.tar.gz",
        folder="cifar-100-binary",
        # From third-party code, not verified against the CIFAR page (shared/data/README.md).
        md5="03b5dce01913d631647c71ecec9e9cb8",
        members={"train.bin": None, "test.bin": None, "fine_label_names.txt": None, "coarse_label_names.txt": None},
        train_files=("train.bin",),
        test_files=("test.bin",),
        meta_files=("fine_label_names.txt", "coarse_label_names.txt"),
    ),
}

# Every dataset the data layer reads is 3 x 32 x 32 (image folders are checked for it): the models' input size.
INPUT_SIZE: tuple[int, int, int] = (3, 32, 32)
# Official binary record sizes: label byte(s) then 3 x 32 x 32 pixel bytes (red plane, green plane, blue plane).
PIXELS_PER_IMAGE = 3 * 32 * 32
CIFAR10_RECORD_BYTES = 1 + PIXELS_PER_IMAGE
CIFAR100_RECORD_BYTES = 2 + PIXELS_PER_IMAGE

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")


