"""In-context augmentations: geometry moves image and label identically; task-level is shared."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshotcx.training.augment import (AugmentConfig, augment_episode, edge_labels, example_augment, flip_rotate,
                               gaussian_blur, intensity_augment, random_warp, remap_intensities, task_augment)

GEOMETRY_ONLY = AugmentConfig(p_flip=1.0, p_rot90=1.0, p_invert=0.0, p_remap=0.0, p_edges=0.0, p_warp=1.0,
                              p_gamma=0.0, p_contrast=0.0, p_noise=0.0, p_blur=0.0)


def _masks(n: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    """``(N, 1, H, W)`` asymmetric soft masks (a flip or rotation always changes them)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centres = 5 + 10 * torch.rand(n, 2, generator=g)
    d = ((y - centres[:, :1, None]) ** 2 / 9 + (x - centres[:, 1:, None]) ** 2 / 30)
    return (torch.sigmoid(4 * (1 - d)) + 0.2 * (x < 4)).clamp(0, 1).unsqueeze(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flip_rotate_matches_numpy():
    x = torch.arange(2 * 2 * 16).float().view(2, 2, 4, 4)
    expected = np.rot90(np.flip(x.numpy(), axis=-1), k=3, axes=(-2, -1))
    assert np.array_equal(flip_rotate(x, False, True, 3).numpy(), expected)


def test_warp_moves_image_channels_and_label_identically():
    labels = _masks()
    images = labels.repeat(1, 3, 1, 1)  # a 2.5D slab whose channels equal the label
    warped_images, warped_labels = random_warp(images, labels, _gen(), AugmentConfig(elastic=0.05))
    assert not torch.allclose(warped_labels, labels, atol=1e-2)  # it did move
    for c in range(3):
        assert torch.allclose(warped_images[:, c:c + 1], warped_labels, atol=1e-6)


def test_task_and_example_geometry_keep_image_and_label_aligned():
    labels = _masks()
    images = labels.repeat(1, 3, 1, 1)
    t_images, t_labels = task_augment(images, labels, _gen(1), GEOMETRY_ONLY)
    assert not torch.equal(t_labels, labels)
    assert torch.equal(t_images, t_labels.repeat(1, 3, 1, 1))
    e_images, e_labels = example_augment(t_images, t_labels, _gen(2), GEOMETRY_ONLY)
    assert torch.allclose(e_images, e_labels.repeat(1, 3, 1, 1), atol=1e-6)


def test_task_level_transform_is_shared_by_all_examples():
    same = _masks(1).repeat(5, 1, 1, 1)
    images, labels = task_augment(same.repeat(1, 3, 1, 1), same, _gen(3), AugmentConfig(p_remap=1.0, p_invert=1.0))
    assert all(torch.equal(images[0], images[i]) and torch.equal(labels[0], labels[i]) for i in range(5))
    e_images, _ = example_augment(same.repeat(1, 3, 1, 1), same, _gen(3))
    assert not all(torch.equal(e_images[0], e_images[i]) for i in range(5))  # example level differs per example


def test_augmentations_are_seeded():
    labels = _masks()
    images = torch.rand(6, 3, 24, 24, generator=_gen(9))
    a = augment_episode(images[:2], labels[:2], images[2:], labels[2:], _gen(5))
    b = augment_episode(images[:2], labels[:2], images[2:], labels[2:], _gen(5))
    c = augment_episode(images[:2], labels[:2], images[2:], labels[2:], _gen(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert [t.shape for t in a] == [(2, 3, 24, 24), (2, 1, 24, 24), (4, 3, 24, 24), (4, 1, 24, 24)]
    assert all(0 <= t.min() and t.max() <= 1 for t in (a[1], a[3]))


def test_intensity_changes_leave_geometry_alone():
    images = torch.rand(8, 1, 24, 24, generator=_gen(0))
    config = AugmentConfig(p_gamma=1.0, p_contrast=1.0, p_noise=0.0, p_blur=0.0)
    out = intensity_augment(images, _gen(1), config)
    # gamma and contrast are monotone per example: the ranking of pixels is unchanged
    assert torch.equal(out.flatten(1).argsort(dim=1), images.flatten(1).argsort(dim=1))
    assert not torch.allclose(out, images)


def test_blur_keeps_constants_and_smooths_noise():
    flat = torch.full((2, 3, 16, 16), 0.7)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 1.5])), flat, atol=1e-6)
    noise = torch.rand(2, 1, 32, 32, generator=_gen(0))
    blurred = gaussian_blur(noise, torch.tensor([0.5, 2.0]))
    assert blurred[1].std() < blurred[0].std() < noise[0].std()


def test_edge_labels_mark_the_boundary_only():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    edges = edge_labels(mask)
    assert edges[0, 0, 8, 8] == 0 and edges[0, 0, 0, 0] == 0 and edges[0, 0, 4, 8] > 0.4


def test_remap_is_a_function_of_intensity():
    images = torch.rand(3, 1, 16, 16, generator=_gen(0))
    out = remap_intensities(images, _gen(1), bins=4)
    assert 0 <= out.min() and out.max() <= 1
    twice = remap_intensities(images, _gen(1), bins=4)
    assert torch.equal(out, twice)
    order = images.flatten().argsort()
    same_value = remap_intensities(images.flatten()[order].view(3, 1, 16, 16), _gen(1), bins=4)
    assert torch.allclose(same_value.flatten(), out.flatten()[order])


@pytest.mark.parametrize("size", [(16, 16), (16, 24)])
def test_non_square_slices_skip_rotation(size):
    labels = torch.rand(2, 1, *size, generator=_gen(0))
    images, out_labels = task_augment(labels.clone(), labels, _gen(0), GEOMETRY_ONLY)
    assert out_labels.shape == labels.shape and torch.equal(images, out_labels)
