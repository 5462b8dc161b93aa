"""Fine-grained data sets in their official on-disk formats, a generic image-folder layout, the embedded synthetic set.

Each reader returns lists of (path, label) for the official train and test splits; ``build_datasets`` carves a
validation split out of the training split (stratified, seeded, ``val_fraction``) unless the layout has its own, so
that the best checkpoint is chosen on validation data and never on the test set. A missing or malformed data set raises
``DatasetLayoutError``, whose message shows the layout that was expected. An unreadable image (a corrupt or truncated
file, or a decompression bomb: more pixels than PIL's limit) becomes a ``Skipped`` item, which the consumer handles
with ``handle_skipped``: ``ImageReadError`` with its path (``bad_images="stop"``), or a count (``bad_images="skip"``).
The decision is taken in the consuming process, so the message is the same with data-loading workers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from .synthetic import SyntheticFGVC, SyntheticSpec

__all__ = ["LAYOUTS", "DatasetLayoutError", "ImageListDataset", "ImageReadError", "Skipped", "Splits",
           "build_datasets", "collate_skipping", "handle_skipped", "read_aircraft", "read_cars", "read_cub",
           "read_folder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")

LAYOUTS = {
    "cub": """CUB-200-2011 (data_root = the CUB_200_2011 folder or its parent):
    CUB_200_2011/images.txt               '<image id> <relative path>' per line
    CUB_200_2011/image_class_labels.txt   '<image id> <class id 1..200>'
    CUB_200_2011/train_test_split.txt     '<image id> <1 = train, 0 = test>'
    CUB_200_2011/classes.txt              '<class id> <class name>' (optional)
    CUB_200_2011/images/<class folder>/<image>.jpg""",
    "cars": """Stanford Cars (data_root = the folder that holds one of the two official layouts):
  devkit layout:
    cars_train/<image>.jpg, cars_test/<image>.jpg
    devkit/cars_train_annos.mat           struct 'annotations' with fields fname, class (1..196)
    cars_test_annos_withlabels.mat        the released test labels (also accepted inside devkit/)
    devkit/cars_meta.mat                  'class_names' (optional)
  or the all-in-one layout:
    cars_annos.mat                        'annotations' with relative_im_path, class, test (0/1); 'class_names'
    car_ims/<image>.jpg""",
    "aircraft": """FGVC-Aircraft, variant level (data_root = fgvc-aircraft-2013b or its data/ folder):
    data/images_variant_trainval.txt      '<image id> <variant name>' per line
    data/images_variant_test.txt
    data/variants.txt                     one variant name per line (optional: the class order)
    data/images/<image id>.jpg""",
    "folder": """Image folder (data_root = the folder that holds the splits):
    train/<class name>/<image>.jpg
    test/<class name>/<image>.jpg
    val/<class name>/<image>.jpg          (optional; otherwise val_fraction of train is held out)""",
}


class DatasetLayoutError(FileNotFoundError):
    """A data set is missing or malformed; the message shows the expected layout."""


class ImageReadError(OSError):
    """An image file could not be read or decoded; the message names its path."""


@dataclass(frozen=True)
class Skipped:
    """The placeholder an unreadable image becomes: its path and why it could not be read."""

    path: str
    reason: str


def handle_skipped(skipped: Sequence[Skipped], bad_images: str) -> None:
    """Apply the ``bad_images`` policy to the unreadable images of a batch: "stop" raises ImageReadError for the first
    one; "skip" accepts them (the caller counts and reports them)."""
    if skipped and bad_images == "stop":
        first = skipped[0]
        raise ImageReadError(f"cannot read image {first.path!r}: {first.reason} (bad_images=skip skips and counts "
                             "unreadable images)")


def _layout_error(kind: str, root: str, problem: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{kind} data set at {root!r}: {problem}.\nExpected layout:\n{LAYOUTS[kind]}")


def _read_table(kind: str, root: str, path: str, columns: int) -> list[list[str]]:
    """Rows of a whitespace-separated text file, the last column keeping its spaces (aircraft variant names)."""
    if not os.path.isfile(path):
        raise _layout_error(kind, root, f"missing file {path!r}")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                row = line.strip().split(maxsplit=columns - 1)
                if len(row) != columns:
                    raise _layout_error(kind, root, f"{path}, line {number}: expected {columns} columns, got {line!r}")
                rows.append(row)
    return rows


Samples = list[tuple[str, int]]


def read_cub(root: str) -> tuple[Samples, Samples, list[str]]:
    """CUB-200-2011: (train, test, class names); labels 0..199 from image_class_labels.txt (1-based on disk)."""
    base = root if os.path.isfile(os.path.join(root, "images.txt")) else os.path.join(root, "CUB_200_2011")
    images = dict(_read_table("cub", root, os.path.join(base, "images.txt"), 2))
    labels = dict(_read_table("cub", root, os.path.join(base, "image_class_labels.txt"), 2))
    is_train = dict(_read_table("cub", root, os.path.join(base, "train_test_split.txt"), 2))
    if not images.keys() == labels.keys() == is_train.keys():
        raise _layout_error("cub", root, "images.txt, image_class_labels.txt and train_test_split.txt list different "
                                         "image ids")
    class_file = os.path.join(base, "classes.txt")
    num_classes = max(int(v) for v in labels.values())
    names = ([name for _, name in _read_table("cub", root, class_file, 2)] if os.path.isfile(class_file)
             else [f"class_{c:03d}" for c in range(1, num_classes + 1)])
    train, test = [], []
    for image_id, rel in images.items():
        (train if is_train[image_id] == "1" else test).append((os.path.join(base, "images", rel),
                                                                int(labels[image_id]) - 1))
    return train, test, names


def _loadmat(path: str) -> dict[str, Any]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("reading Stanford Cars' .mat annotations needs SciPy: pip install scipy") from None
    return loadmat(path, squeeze_me=True)


def _mat_records(kind: str, root: str, path: str, fields: Sequence[str]) -> list[tuple]:
    if not os.path.isfile(path):
        raise _layout_error(kind, root, f"missing file {path!r}")
    annotations = _loadmat(path).get("annotations")
    names = getattr(getattr(annotations, "dtype", None), "names", None) or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise _layout_error(kind, root, f"{path} has no 'annotations' struct with fields {missing}")
    return [tuple(record[f] for f in fields) for record in annotations.ravel()]


def read_cars(root: str) -> tuple[Samples, Samples, list[str]]:
    """Stanford Cars (either official layout): (train, test, class names); labels 0..195 (1-based on disk)."""
    all_in_one = os.path.join(root, "cars_annos.mat")
    if os.path.isfile(all_in_one):
        records = _mat_records("cars", root, all_in_one, ("relative_im_path", "class", "test"))
        train = [(os.path.join(root, str(p)), int(c) - 1) for p, c, t in records if not int(t)]
        test = [(os.path.join(root, str(p)), int(c) - 1) for p, c, t in records if int(t)]
        names = [str(n).strip() for n in _loadmat(all_in_one).get("class_names", [])]
    else:
        test_annos = os.path.join(root, "cars_test_annos_withlabels.mat")
        if not os.path.isfile(test_annos):
            test_annos = os.path.join(root, "devkit", "cars_test_annos_withlabels.mat")
        train_records = _mat_records("cars", root, os.path.join(root, "devkit", "cars_train_annos.mat"),
                                     ("fname", "class"))
        test_records = _mat_records("cars", root, test_annos, ("fname", "class"))
        train = [(os.path.join(root, "cars_train", str(f)), int(c) - 1) for f, c in train_records]
        test = [(os.path.join(root, "cars_test", str(f)), int(c) - 1) for f, c in test_records]
        meta = os.path.join(root, "devkit", "cars_meta.mat")
        names = [str(n).strip() for n in _loadmat(meta).get("class_names", [])] if os.path.isfile(meta) else []
    num_classes = max(label for _, label in train + test) + 1
    return train, test, names if len(names) == num_classes else [f"class_{c:03d}" for c in range(1, num_classes + 1)]


def read_aircraft(root: str) -> tuple[Samples, Samples, list[str]]:
    """FGVC-Aircraft at the variant level: (trainval, test, variant names); classes in variants.txt order."""
    base = root if os.path.isfile(os.path.join(root, "images_variant_trainval.txt")) else os.path.join(root, "data")
    trainval = _read_table("aircraft", root, os.path.join(base, "images_variant_trainval.txt"), 2)
    test = _read_table("aircraft", root, os.path.join(base, "images_variant_test.txt"), 2)
    variants_file = os.path.join(base, "variants.txt")
    if os.path.isfile(variants_file):
        with open(variants_file, encoding="utf-8") as fh:
            names = [line.strip() for line in fh if line.strip()]
    else:
        names = sorted({variant for _, variant in trainval + test})
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({v for _, v in trainval + test} - index.keys())
    if unknown:
        raise _layout_error("aircraft", root, f"variants {unknown[:3]} are not listed in {variants_file}")

    def samples(rows: list[list[str]]) -> Samples:
        return [(os.path.join(base, "images", f"{image_id}.jpg"), index[variant]) for image_id, variant in rows]

    return samples(trainval), samples(test), names


def _class_folders(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _folder_split(root: str, split: str, classes: list[str]) -> Samples:
    folder = os.path.join(root, split)
    samples = []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        if os.path.isdir(class_dir):
            samples += [(os.path.join(class_dir, f), label) for f in sorted(os.listdir(class_dir))
                        if f.lower().endswith(IMAGE_EXTENSIONS)]
    return samples


def read_folder(root: str) -> tuple[Samples, Samples, Samples | None, list[str]]:
    """Image folder: (train, test, val or None, class names from train/'s sub-folders, sorted).

    Every class folder under train/ must hold images (an empty one would be an output class without data), and every
    class folder under test/ and val/ must exist under train/ (its images would otherwise be dropped)."""
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(root, split)):
            raise _layout_error("folder", root, f"missing folder {os.path.join(root, split)!r}")
    classes = _class_folders(os.path.join(root, "train"))
    if not classes:
        raise _layout_error("folder", root, f"{os.path.join(root, 'train')!r} has no class folders")
    train = _folder_split(root, "train", classes)
    empty = sorted(set(classes) - {classes[label] for _, label in train})
    if empty:
        raise _layout_error("folder", root, f"training class folders {empty} under {os.path.join(root, 'train')!r} "
                                            f"hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    splits = {}
    for split in ("test", "val"):
        folder = os.path.join(root, split)
        if split == "val" and not os.path.isdir(folder):
            continue
        extra = sorted(set(_class_folders(folder)) - set(classes))
        if extra:
            raise _layout_error("folder", root, f"class folders {extra} under {folder!r} have no training folder "
                                                f"under {os.path.join(root, 'train')!r}")
        splits[split] = _folder_split(root, split, classes)
        if not splits[split]:
            raise _layout_error("folder", root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}")
    return train, splits["test"], splits.get("val"), classes


class ImageListDataset(Dataset):
    """Images from a list of (path, label): PIL RGB -> ``transform``. ``crop_bottom`` removes that many pixel rows at
    the bottom first (FGVC-Aircraft's copyright banner). An unreadable file (corrupt, truncated, not an image, or a
    decompression bomb) becomes a ``Skipped`` item, which ``collate_skipping`` sets apart and ``handle_skipped``
    judges."""

    def __init__(self, samples: Samples, classes: list[str], transform: Callable | None = None,
                 crop_bottom: int = 0) -> None:
        self.samples, self.classes, self.transform, self.crop_bottom = samples, classes, transform, crop_bottom

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | Skipped:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return Skipped(path, f"{type(err).__name__}: {err}")
        if self.crop_bottom:
            image = image.crop((0, 0, image.width, image.height - self.crop_bottom))
        return (self.transform(image) if self.transform else image), label


def collate_skipping(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
    """Stack (image, label) pairs; set ``Skipped`` items apart and return them as the third element."""
    kept = [item for item in batch if not isinstance(item, Skipped)]
    skipped = [item for item in batch if isinstance(item, Skipped)]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([image for image, _ in kept])
    return images, torch.tensor([label for _, label in kept], dtype=torch.long), skipped


def image_transform(resize: Sequence[int], crop: int | None, flip: bool) -> Callable:
    """Resize ([short side] or [height, width]), optional centre crop, optional random flip, ImageNet normalisation."""
    from torchvision import transforms as T

    steps = [T.Resize(resize[0] if len(resize) == 1 else tuple(resize))]
    if crop:
        steps.append(T.CenterCrop(crop))
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def stratified_split(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """(kept, held out): ``round(fraction * n_c)`` images of each class c held out (at least one when fraction > 0 and
    the class has two or more), chosen by a generator seeded with ``seed``."""
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    held = set()
    for indices in by_class.values():
        n = min(max(round(fraction * len(indices)), 1 if fraction > 0 else 0), len(indices) - 1)
        held.update(rng.sample(indices, n))
    return ([s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held])


@dataclass
class Splits:
    """The three splits of a run; ``val`` is None when no validation data is held out (val_fraction = 0)."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    classes: list[str]


def build_datasets(config: Any) -> Splits:
    """The train/val/test datasets a Config asks for (see config.Config for the fields used)."""
    if config.dataset == "synthetic":
        spec = SyntheticSpec(variant=config.variant, num_classes=config.synthetic_classes, seed=config.synthetic_seed)
        train = SyntheticFGVC("train", config.synthetic_train, spec)
        val = SyntheticFGVC("val", config.synthetic_val, spec) if config.synthetic_val else None
        return Splits(train, val, SyntheticFGVC("test", config.synthetic_test, spec), train.classes)
    root = config.data_root
    if not os.path.isdir(root):
        raise _layout_error(config.dataset, root, "the folder does not exist")
    val = None
    if config.dataset == "folder":
        train, test, val, classes = read_folder(root)
    else:
        train, test, classes = {"cub": read_cub, "cars": read_cars, "aircraft": read_aircraft}[config.dataset](root)
    if val is None and config.val_fraction > 0:
        train, val = stratified_split(train, config.val_fraction, config.seed)
    crop_bottom = 20 if config.dataset == "aircraft" else 0
    train_tf = image_transform(config.resize, config.crop, config.flip)
    eval_tf = image_transform(config.resize, config.crop, False)

    def dataset(samples: Samples, transform: Callable) -> ImageListDataset:
        return ImageListDataset(samples, classes, transform, crop_bottom)

    return Splits(dataset(train, train_tf), dataset(val, eval_tf) if val else None, dataset(test, eval_tf), classes)
