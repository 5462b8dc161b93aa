"""Data sets in their official layouts (tiny fakes written to tmp_path), layout errors, unreadable images, splits."""

import os

import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from eigpool.models.config import Config  # noqa: E402
from eigpool.models.data import (  # noqa: E402
    DatasetLayoutError,
    ImageListDataset,
    ImageReadError,
    Skipped,
    build_datasets,
    collate_skipping,
    handle_skipped,
    read_aircraft,
    read_cars,
    read_cub,
    read_folder,
    stratified_split,
)


def _image(path, size=(12, 10), color=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _fake_cub(root):
    base = root / "CUB_200_2011"
    rows = [(1, "001.A/a1.jpg", 1, 1), (2, "001.A/a2.jpg", 1, 0), (3, "002.B/b1.jpg", 2, 1), (4, "002.B/b2.jpg", 2, 0)]
    for _, rel, _, _ in rows:
        _image(base / "images" / rel)
    (base / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _, _ in rows))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
    (base / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in rows))
    (base / "classes.txt").write_text("1 001.A\n2 002.B\n")
    return base


def test_cub(tmp_path):
    base = _fake_cub(tmp_path)
    for root in (tmp_path, base):  # the CUB_200_2011 folder or its parent
        train, test, names = read_cub(str(root))
        assert [(os.path.basename(p), c) for p, c in train] == [("a1.jpg", 0), ("b1.jpg", 1)]
        assert [c for _, c in test] == [0, 1] and names == ["001.A", "002.B"]


def test_aircraft_crops_the_banner(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    for image_id in ("0001", "0002", "0003"):
        _image(data / "images" / f"{image_id}.jpg", size=(50, 40))
    (data / "variants.txt").write_text("Boeing 707-320\nA320\n")
    (data / "images_variant_trainval.txt").write_text("0001 Boeing 707-320\n0002 A320\n")
    (data / "images_variant_test.txt").write_text("0003 A320\n")
    train, test, names = read_aircraft(str(tmp_path / "fgvc-aircraft-2013b"))
    assert [c for _, c in train] == [0, 1] and [c for _, c in test] == [1] and names[0] == "Boeing 707-320"
    config = Config(dataset="aircraft", data_root=str(tmp_path / "fgvc-aircraft-2013b"), resize=[40, 50], crop=None,
                    flip=False, val_fraction=0).validate()
    image, label = ImageListDataset(train, names, crop_bottom=20)[0]
    assert image.size == (50, 20) and label == 0
    assert build_datasets(config).train[0][0].shape == (3, 40, 50)


def _savemat(path, records, fields, **extra):
    scipy_io = pytest.importorskip("scipy.io")
    import numpy as np

    annotations = np.array([tuple(r) for r in records], dtype=[(f, object) for f in fields])
    scipy_io.savemat(path, {"annotations": annotations, **extra})


def test_cars_devkit_layout(tmp_path):
    os.makedirs(tmp_path / "devkit")
    for folder, name in (("cars_train", "00001.jpg"), ("cars_train", "00002.jpg"), ("cars_test", "00001.jpg")):
        _image(tmp_path / folder / name)
    _savemat(tmp_path / "devkit" / "cars_train_annos.mat", [("00001.jpg", 1), ("00002.jpg", 2)], ("fname", "class"))
    _savemat(tmp_path / "cars_test_annos_withlabels.mat", [("00001.jpg", 2)], ("fname", "class"))
    train, test, names = read_cars(str(tmp_path))
    assert [(os.path.relpath(p, tmp_path), c) for p, c in train] == [
        (os.path.join("cars_train", "00001.jpg"), 0), (os.path.join("cars_train", "00002.jpg"), 1)]
    assert [c for _, c in test] == [1] and len(names) == 2


def test_cars_all_in_one_layout(tmp_path):
    for i in (1, 2, 3):
        _image(tmp_path / "car_ims" / f"{i:06d}.jpg")
    records = [("car_ims/000001.jpg", 1, 0), ("car_ims/000002.jpg", 2, 0), ("car_ims/000003.jpg", 2, 1)]
    _savemat(tmp_path / "cars_annos.mat", records, ("relative_im_path", "class", "test"),
             class_names=["AM General Hummer", "Acura RL"])
    train, test, names = read_cars(str(tmp_path))
    assert [c for _, c in train] == [0, 1] and [c for _, c in test] == [1]
    assert names == ["AM General Hummer", "Acura RL"]


def test_folder_layout_and_its_validation_split(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("cat", "dog"):
            _image(tmp_path / split / cls / "x.png")
    train, test, val, classes = read_folder(str(tmp_path))
    assert classes == ["cat", "dog"] and len(train) == len(test) == len(val) == 2


@pytest.mark.parametrize(("dataset", "snippet"), [
    ("cub", "image_class_labels.txt"), ("cars", "cars_train_annos.mat"), ("aircraft", "images_variant_trainval.txt"),
    ("folder", "train/<class name>"),
])
def test_missing_data_set_shows_the_layout(tmp_path, dataset, snippet):
    config = Config(dataset=dataset, data_root=str(tmp_path)).validate()
    with pytest.raises(DatasetLayoutError, match="Expected layout") as info:
        build_datasets(config)
    assert snippet in str(info.value) and str(tmp_path) in str(info.value)


def test_malformed_table_names_the_line(tmp_path):
    base = _fake_cub(tmp_path)
    (base / "train_test_split.txt").write_text("1 1\n2\n")
    with pytest.raises(DatasetLayoutError, match=r"train_test_split.txt, line 2: expected 2 columns"):
        read_cub(str(tmp_path))


def test_unreadable_image_stop_or_skip(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    _image(good)
    bad.write_bytes(b"not an image")
    from torchvision.transforms import ToTensor

    dataset = ImageListDataset([(str(good), 0), (str(bad), 1)], ["a", "b"], ToTensor())
    assert isinstance(dataset[1], Skipped) and dataset[1].path == str(bad)
    images, labels, skipped = collate_skipping([dataset[0], dataset[1]])
    assert images.shape == (1, 3, 10, 12) and labels.tolist() == [0] and skipped == [dataset[1]]
    handle_skipped(skipped, "skip")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        handle_skipped(skipped, "stop")


def test_stratified_split():
    samples = [(f"{c}-{i}", c) for c in range(3) for i in range(10)]
    kept, held = stratified_split(samples, 0.2, seed=0)
    assert sorted(kept + held) == sorted(samples)
    assert [sum(1 for _, c in held if c == k) for k in range(3)] == [2, 2, 2]
    assert stratified_split(samples, 0.2, seed=0) == (kept, held)
