"""Dataset folders: generic images/+masks/, Inria, WHU; every error names its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from cubesearch.core.errors import CubesearchError
from cubesearch.training.data import make_datasets
from cubesearch.training.data.folder import (
    FolderDataset,
    check_folder,
    detect_layout,
    folder_datasets,
    pair_folder,
    split_pairs,
)
from cubesearch.training.data.transforms import IGNORE_INDEX, grid_crops


def make_pair(rng, h, w, channels=3):
    img = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y:y + h // 3, x:x + w // 3] = 1
    return img, mask


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)
    return path


def generic(root: Path, n=5, size=40, ext=".png", mask_ext=".png", mask_scale=255, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, mask = make_pair(rng, size, size)
        write(root / "images" / f"tile_{i}{ext}", img)
        write(root / "masks" / f"tile_{i}{mask_ext}", mask * mask_scale)
    return root


def test_generic_layout_with_val_split(tmp_path):
    root = generic(tmp_path / "ds", n=5)
    layout = detect_layout(root)
    assert layout.name == "generic" and len(layout.train) == 5 and layout.val is None
    train, val = folder_datasets(root, 32, val_split=0.4, seed=1)
    assert (len(train.pairs), len(val.pairs)) == (3, 2)
    assert {p.image.stem for p in train.pairs}.isdisjoint({p.image.stem for p in val.pairs})
    x, m = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and m.dtype == torch.uint8
    assert set(m.unique().tolist()) <= {0, 1}
    # the same seed gives the same split; the default fraction is 0.2
    again = folder_datasets(root, 32, val_split=0.4, seed=1)[1]
    assert [p.image for p in again.pairs] == [p.image for p in val.pairs]
    assert len(folder_datasets(root, 32)[1].pairs) == 1


def test_generic_train_val_folders_jpg_and_tif(tmp_path):
    root = tmp_path / "ds"
    generic(root / "train", n=3, ext=".jpg", mask_ext=".tif", mask_scale=1)
    generic(root / "val", n=2, ext=".tif", mask_ext=".png", seed=1)
    train, val = make_datasets(str(root), 32)
    assert (len(train.pairs), len(val.pairs)) == (3, 2)
    for ds in (train, val):
        for i in range(len(ds)):
            x, m = ds[i]
            assert x.shape == (3, 32, 32) and set(m.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    with pytest.raises(CubesearchError, match="has a validation folder; --val-split"):
        folder_datasets(root, 32, val_split=0.3)


def test_masks_in_0_1_and_0_255_give_the_same_labels(tmp_path):
    a = generic(tmp_path / "a", n=2, mask_scale=1)
    b = generic(tmp_path / "b", n=2, mask_scale=255)
    va = folder_datasets(a, 40, val_split=0.5)[1]
    vb = folder_datasets(b, 40, val_split=0.5)[1]
    assert torch.equal(va[0][1], vb[0][1]) and int(va[0][1].sum()) > 0


def test_validation_grid_scores_every_pixel_once(tmp_path):
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (70, 50), "b": (64, 64)}.items():
        img, mask = make_pair(rng, h, w)
        write(root / "val" / "images" / f"{name}.png", img)
        write(root / "val" / "masks" / f"{name}.png", mask * 255)
        write(root / "train" / "images" / f"{name}.png", img)
        write(root / "train" / "masks" / f"{name}.png", mask * 255)
    _, val = folder_datasets(root, 32)
    scored = sum(int((val[i][1] != IGNORE_INDEX).sum()) for i in range(len(val)))
    assert scored == 70 * 50 + 64 * 64
    positives = sum(int((val[i][1] == 1).sum()) for i in range(len(val)))
    expected = sum(int((np.asarray(Image.open(p.mask)) > 0).sum()) for p in val.pairs)
    assert positives == expected
    assert len(val) == len(grid_crops(70, 50, 32)) + len(grid_crops(64, 64, 32))


def test_grid_crops_cover_exactly_once():
    for h, w, s in ((70, 50, 32), (64, 64, 32), (32, 32, 32), (100, 33, 16)):
        cover = np.zeros((h, w), int)
        for y, x, oy, ox in grid_crops(h, w, s):
            tile = np.ones((s, s), int)
            tile[:oy] = 0
            tile[:, :ox] = 0
            cover[y:y + s, x:x + s] += tile
        assert (cover == 1).all()


def test_training_crops_are_random_but_reproducible(tmp_path):
    root = generic(tmp_path / "ds", n=3, size=64)
    train, _ = folder_datasets(root, 32, val_split=0.34, seed=2)
    assert len(train) == 2 * 4  # as many crops per image as it holds tiles
    train.set_epoch(0)
    a = [train[i][0] for i in range(len(train))]
    assert all(torch.equal(x, train[i][0]) for i, x in enumerate(a))
    train.set_epoch(1)
    b = [train[i][0] for i in range(len(train))]
    assert any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))
    more, _ = folder_datasets(root, 32, val_split=0.34, seed=2, crops_per_image=5)
    assert len(more) == 10


def inria(root: Path, cities=("austin", "chicago"), n=6, size=48, compress=False):
    rng = np.random.default_rng(0)
    for city in cities:
        for i in range(1, n + 1):
            img, mask = make_pair(rng, size, size)
            kw = {"compression": "zlib"} if compress else {}
            (root / "train" / "images").mkdir(parents=True, exist_ok=True)
            (root / "train" / "gt").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / "train" / "images" / f"{city}{i}.tif", img, **kw)
            tifffile.imwrite(root / "train" / "gt" / f"{city}{i}.tif", mask * 255, **kw)
    return root


@pytest.mark.parametrize("compress", [False, True])
def test_inria_layout_uses_the_standard_split(tmp_path, compress):
    inria(tmp_path / "AerialImageDataset", compress=compress)
    layout = detect_layout(tmp_path)  # found through AerialImageDataset/
    assert layout.name == "inria"
    train, val = folder_datasets(tmp_path, 32)
    assert sorted(p.image.stem for p in val.pairs) == sorted(
        f"{c}{i}" for c in ("austin", "chicago") for i in range(1, 6))
    assert sorted(p.image.stem for p in train.pairs) == ["austin6", "chicago6"]
    assert len(val) == 10 * 4  # 48×48 → a 2×2 grid of 32×32 tiles, each
    x, m = val[3]
    assert x.shape == (3, 32, 32) and set(m.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    assert len(folder_datasets(tmp_path, 32, val_split=0.25)[1].pairs) == 3


def test_whu_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            img, mask = make_pair(rng, 32, 32)
            write(tmp_path / split / "image" / f"{i}.tif", img)
            write(tmp_path / split / "label" / f"{i}.tif", mask * 255)
    assert detect_layout(tmp_path).name == "whu"
    train, val = folder_datasets(tmp_path, 32)
    assert (len(train), len(val)) == (3, 2)
    assert int(val[0][1].max()) == 1


def test_multiclass_masks(tmp_path):
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for i in range(2):
        img, _ = make_pair(rng, 32, 32)
        mask = rng.integers(0, 3, (32, 32), dtype=np.uint8)
        mask[0, 0] = 255
        write(root / "images" / f"{i}.png", img)
        write(root / "masks" / f"{i}.png", mask)
    train, val = folder_datasets(root, 32, num_classes=3, val_split=0.5)
    assert set(val[0][1].unique().tolist()) <= {0, 1, 2, 255}
    with pytest.raises(CubesearchError, match=r"mask .*0\.png has values \{0, 1, 2, 255\}; binary"):
        folder_datasets(root, 32, val_split=0.5)


def test_image_channels(tmp_path):
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for i in range(2):
        img, mask = make_pair(rng, 32, 32, channels=4)
        write(root / "images" / f"{i}.png", img)  # RGBA: the first 3 channels are used
        write(root / "masks" / f"{i}.png", mask)
    train, _ = folder_datasets(root, 32, val_split=0.5)
    assert train[0][0].shape == (3, 32, 32)
    assert folder_datasets(root, 32, val_split=0.5, in_channels=4)[0][0][0].shape == (4, 32, 32)
    with pytest.raises(CubesearchError, match=r"0\.png has 4 channel\(s\); the model takes 5"):
        folder_datasets(root, 32, val_split=0.5, in_channels=5)


def test_sixteen_bit_images_become_floats(tmp_path):
    root = tmp_path / "ds"
    for i in range(2):
        img = np.full((32, 32, 3), 65535 // 2, np.uint16)
        write(root / "images" / f"{i}.tif", img)
        write(root / "masks" / f"{i}.png", np.zeros((32, 32), np.uint8))
    x = folder_datasets(root, 32, val_split=0.5)[1][0][0]
    assert x.dtype == torch.float32 and float(x.mean()) == pytest.approx(0.5, abs=1e-3)


# --- every error names the file -------------------------------------------------------------


def test_bad_mask_values_name_the_file_and_values(tmp_path):
    root = generic(tmp_path / "ds", n=2)
    bad = np.zeros((40, 40), np.uint8)
    bad[:5] = 128
    bad[5:10] = 255
    write(root / "masks" / "tile_1.png", bad)
    with pytest.raises(CubesearchError, match=r"mask .*tile_1\.png has values \{0, 128, 255\}"):
        folder_datasets(root, 32, val_split=0.5)
    with pytest.raises(CubesearchError, match=r"tile_1\.png has values"):
        check_folder(root)


def test_size_mismatch_names_both_files(tmp_path):
    root = generic(tmp_path / "ds", n=2)
    write(root / "masks" / "tile_0.png", np.zeros((40, 30), np.uint8))
    message = r"image .*tile_0\.png is 40×40 but its mask .*tile_0\.png is 30×40"
    with pytest.raises(CubesearchError, match=message):
        folder_datasets(root, 32, val_split=0.5)


def test_missing_and_orphan_masks(tmp_path):
    root = generic(tmp_path / "ds", n=3)
    (root / "masks" / "tile_2.png").unlink()
    with pytest.raises(CubesearchError, match=r"image .*tile_2\.png has no mask"):
        detect_layout(root)
    write(root / "masks" / "tile_2.png", np.zeros((40, 40), np.uint8))
    write(root / "masks" / "extra.png", np.zeros((40, 40), np.uint8))
    with pytest.raises(CubesearchError, match=r"mask .*extra\.png has no image"):
        detect_layout(root)


def test_unreadable_file_is_named(tmp_path):
    root = generic(tmp_path / "ds", n=2)
    (root / "images" / "tile_1.png").write_bytes(b"this is not a png")
    with pytest.raises(CubesearchError, match=r"cannot read .*tile_1\.png"):
        folder_datasets(root, 32, val_split=0.5)


def test_empty_and_unknown_folders(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(CubesearchError, match=r"empty/images has no images"):
        detect_layout(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    with pytest.raises(CubesearchError, match="no dataset found in .*other: expected images/"):
        detect_layout(tmp_path / "other")
    with pytest.raises(CubesearchError, match="does not exist"):
        make_datasets(str(tmp_path / "nowhere"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CubesearchError, match="is not a folder"):
        make_datasets(str(tmp_path / "file.txt"))
    (tmp_path / "nomasks" / "images").mkdir(parents=True)
    with pytest.raises(CubesearchError, match="nomasks/masks is missing"):
        detect_layout(tmp_path / "nomasks")


def test_image_smaller_than_tile_and_split_limits(tmp_path):
    root = generic(tmp_path / "ds", n=2, size=24)
    with pytest.raises(CubesearchError, match=r"tile_\d\.png is 24×24, smaller than the 32×32 tiles"):
        folder_datasets(root, 32, val_split=0.5)
    one = generic(tmp_path / "one", n=1)
    with pytest.raises(CubesearchError, match="at least 2 are needed"):
        folder_datasets(one, 32)
    with pytest.raises(CubesearchError, match="between 0 and 1"):
        folder_datasets(root, 16, val_split=1.5)


def test_duplicate_stems(tmp_path):
    root = generic(tmp_path / "ds", n=2)
    write(root / "images" / "tile_0.jpg", np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(CubesearchError, match="two images with the stem 'tile_0'"):
        pair_folder(root / "images", root / "masks")


def test_multichannel_mask_with_different_bands_is_an_error(tmp_path):
    root = generic(tmp_path / "ds", n=2)
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 255
    write(root / "masks" / "tile_0.png", rgb)
    with pytest.raises(CubesearchError, match=r"tile_0\.png has 3 different channels"):
        folder_datasets(root, 32, val_split=0.5)


def test_check_folder_summary(tmp_path):
    root = generic(tmp_path / "ds", n=4)
    stats = check_folder(root, val_split=0.25)
    assert stats["layout"] == "generic" and stats["train_images"] == 3 and stats["val_images"] == 1
    assert stats["pixels"] == 4 * 40 * 40 and 0 < stats["building_fraction"] < 0.5


def test_lazy_loading_reports_bad_files_on_use(tmp_path, monkeypatch):
    """Too large to preload: headers are still checked up front, values when a file is read."""
    root = generic(tmp_path / "ds", n=2)
    bad = np.full((40, 40), 7, np.uint8)
    write(root / "masks" / "tile_0.png", bad)
    layout = detect_layout(root)
    ds = FolderDataset(layout.train, 32, train=False, preload=False)
    with pytest.raises(CubesearchError, match=r"tile_0\.png has values \{7\}"):
        for i in range(len(ds)):
            ds[i]
    monkeypatch.setenv("CUBESEARCH_CACHE_MB", "0.001")
    ds2 = FolderDataset(split_pairs(detect_layout(generic(tmp_path / "ok", n=2)), 0.5, 0)[0], 32,
                        train=True)
    assert ds2[0][0].shape == (3, 32, 32)
