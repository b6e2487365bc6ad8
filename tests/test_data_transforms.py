"""fcnseg.data.transforms: image and mask move together, masks stay labels, padding uses the ignore label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from fcnseg.data import RandomScale, VOCSegmentation, eval_transforms, pad_collate, train_transforms


def _pair(image: np.ndarray | Tensor, mask: np.ndarray | Tensor) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    image, mask = torch.as_tensor(image), torch.as_tensor(mask)
    if image.ndim == 2:
        image = image.expand(3, *image.shape)
    return tv_tensors.Image(image.to(torch.uint8)), tv_tensors.Mask(mask.to(torch.int64))


def test_random_scale_is_nearest_for_masks() -> None:
    image, mask = _pair(torch.zeros(2, 2), [[1, 2], [3, 255]])
    image2, mask2 = RandomScale((2.0, 2.0))(image, mask)
    assert isinstance(mask2, tv_tensors.Mask) and image2.shape == (3, 4, 4)
    assert mask2.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 255, 255], [3, 3, 255, 255]]
    image3, mask3 = RandomScale((0.5, 0.5))(*_pair(torch.zeros(6, 4), torch.zeros(6, 4)))
    assert image3.shape == (3, 3, 2) and mask3.shape == (3, 2)
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((2.0, 1.0))


def test_random_scale_keeps_labels_and_sizes() -> None:
    labels = torch.tensor([0, 3, 7, 255])
    mask = labels[torch.randint(0, 4, (37, 53))]
    image = torch.randint(0, 256, (3, 37, 53))
    tf = train_transforms(None, scale_range=(0.5, 2.0), hflip=True)
    sizes = set()
    for seed in range(10):
        torch.manual_seed(seed)
        image2, mask2 = tf(*_pair(image, mask))
        assert image2.dtype == torch.uint8 and mask2.dtype == torch.int64
        assert image2.shape[1:] == mask2.shape
        assert 18 <= mask2.shape[0] <= 74 and 26 <= mask2.shape[1] <= 106  # 0.5x .. 2x of 37 x 53
        assert abs(mask2.shape[0] / 37 - mask2.shape[1] / 53) < 0.05  # one factor for both sides
        assert set(mask2.unique().tolist()) <= {0, 3, 7, 255}
        sizes.add(tuple(mask2.shape))
    assert len(sizes) > 5


def test_crop_pads_small_images_with_ignore() -> None:
    tf = train_transforms(4, scale_range=None, hflip=False)
    offsets = set()
    for seed in range(20):
        torch.manual_seed(seed)
        image, mask = tf(*_pair(torch.full((2, 3), 9), torch.ones(2, 3)))
        assert image.shape == (3, 4, 4) and mask.shape == (4, 4)
        assert (mask == 1).sum() == 6 and (mask == 255).sum() == 10
        assert (image[:, mask == 255] == 0).all() and (image[:, mask == 1] == 9).all()
        rows, cols = torch.nonzero(mask == 1, as_tuple=True)
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (2, 3)  # the image, whole
        offsets.add((int(rows.min()), int(cols.min())))
    assert len(offsets) > 1  # placed at random, not always top-left


def test_crop_takes_one_window_from_image_and_mask() -> None:
    base = torch.arange(10 * 12).reshape(10, 12)
    tf = train_transforms((5, 7), scale_range=None, hflip=False)
    for seed in range(5):
        torch.manual_seed(seed)
        image, mask = tf(*_pair(base, base))
        assert mask.shape == (5, 7)
        top, left = divmod(int(mask[0, 0]), 12)
        assert torch.equal(mask, base[top: top + 5, left: left + 7])
        assert torch.equal(image[0].long(), mask)


def test_flip_moves_image_and_mask_together() -> None:
    image = torch.tensor([[[10, 20, 30]], [[11, 21, 31]], [[12, 22, 32]]])  # (3, 1, 3)
    mask = torch.tensor([[0, 1, 255]])
    tf = train_transforms(None, scale_range=None, hflip=True)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        image2, mask2 = tf(*_pair(image, mask))
        if mask2.tolist() == [[255, 1, 0]]:
            assert image2[:, 0].tolist() == [[30, 20, 10], [31, 21, 11], [32, 22, 12]]
            seen.add("flipped")
        else:
            assert mask2.tolist() == [[0, 1, 255]] and torch.equal(image2, image.to(torch.uint8))
            seen.add("kept")
    assert seen == {"flipped", "kept"}


def test_color_jitter_touches_the_image_only() -> None:
    image = torch.randint(0, 256, (3, 16, 16))
    mask = torch.randint(0, 5, (16, 16))
    tf = train_transforms(None, scale_range=None, hflip=False, color_jitter=0.5)
    image2, mask2 = tf(*_pair(image, mask))
    assert torch.equal(mask2, mask) and image2.dtype == torch.uint8
    assert not torch.equal(image2, image.to(torch.uint8))


def test_eval_transforms_is_identity() -> None:
    image, mask = _pair(torch.randint(0, 256, (3, 5, 4)), torch.randint(0, 21, (5, 4)))
    image2, mask2 = eval_transforms()(image, mask)
    assert isinstance(image2, tv_tensors.Image) and isinstance(mask2, tv_tensors.Mask)
    assert torch.equal(image2, image) and torch.equal(mask2, mask)


def test_pad_collate_pads_bottom_right() -> None:
    batch = [_pair(torch.full((2, 3), 5), torch.full((2, 3), 1)),
             _pair(torch.full((4, 2), 7), torch.full((4, 2), 2))]
    images, masks = pad_collate(batch)
    assert type(images) is Tensor and type(masks) is Tensor  # plain tensors, not tv_tensors
    assert images.shape == (2, 3, 4, 3) and images.dtype == torch.uint8
    assert masks.shape == (2, 4, 3) and masks.dtype == torch.int64
    assert (images[0, :, :2, :3] == 5).all() and (images[0, :, 2:] == 0).all()
    assert (masks[0, :2, :3] == 1).all() and (masks[0, 2:] == 255).all()
    assert (images[1, :, :, :2] == 7).all() and (images[1, :, :, 2] == 0).all()
    assert (masks[1, :, :2] == 2).all() and (masks[1, :, 2] == 255).all()

    images, masks = pad_collate(batch, ignore_index=100, size_divisor=4)
    assert images.shape == (2, 3, 4, 4) and masks.shape == (2, 4, 4)
    assert (masks[0] == 100).sum() == 16 - 6 and (masks[1] == 100).sum() == 16 - 8
    with pytest.raises(ValueError, match="differ in size"):
        pad_collate([_pair(torch.zeros(2, 2), torch.zeros(2, 3))])


def test_loader_over_real_sample(data_root: Path) -> None:
    ds = VOCSegmentation(data_root / "voc_sample" / "VOC2011", "val", transforms=train_transforms(64))
    images, masks = next(iter(DataLoader(ds, batch_size=2, collate_fn=pad_collate)))
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64)
    # 2007_000129 holds {0, 2, 15, 255}, 2011_000003 holds {0, 5, 15, 255}.
    assert set(masks.unique().tolist()) <= {0, 2, 5, 15, 255}
