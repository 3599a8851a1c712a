"""The tensor ops of transformers' torchvision backend, in the same order, dtypes and memory layout.

pixel_values must equal transformers' bit for bit, so these mirror `TorchvisionBackend.resize` and
`rescale_and_normalize` (transformers 5.23, image_processing_backends.py) and GotOcr2's tile-grid choice
(`get_optimal_tiled_canvas`) rather than reimplementing the maths differently.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torchvision.transforms.v2 import functional as tvF

# PIL resampling code -> torchvision interpolation (transformers' pil_torch_interpolation_mapping).
_INTERPOLATION = {
    0: tvF.InterpolationMode.NEAREST_EXACT,
    4: tvF.InterpolationMode.BOX,
    2: tvF.InterpolationMode.BILINEAR,
    5: tvF.InterpolationMode.HAMMING,
    3: tvF.InterpolationMode.BICUBIC,
    1: tvF.InterpolationMode.LANCZOS,
}


def resize(images: torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """[..., C, H, W] uint8 (or float) -> [..., C, height, width], antialiased like transformers."""
    interpolation = _INTERPOLATION[resample]
    return tvF.resize(images, (height, width), interpolation=interpolation, antialias=True)


@lru_cache(maxsize=16)
def _fused_mean_std(
    image_mean: tuple[float, ...], image_std: tuple[float, ...], rescale_factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    # Rescale folded into normalisation: (x - mean/r) / (std/r), exactly as transformers fuses them.
    mean = torch.tensor(image_mean) * (1.0 / rescale_factor)
    std = torch.tensor(image_std) * (1.0 / rescale_factor)
    return mean, std


def rescale_and_normalize(
    images: torch.Tensor,
    *,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: tuple[float, ...],
    image_std: tuple[float, ...],
) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32, through the same fused path as TorchvisionBackend.rescale_and_normalize."""
    if do_normalize:
        if do_rescale:
            mean, std = _fused_mean_std(tuple(image_mean), tuple(image_std), float(rescale_factor))
        else:
            mean, std = list(image_mean), list(image_std)
        inplace = images.dtype != torch.float32  # .to() made a copy, so transformers normalises it in place
        return tvF.normalize(images.to(torch.float32), mean, std, inplace=inplace)
    if do_rescale:
        return images * rescale_factor
    return images.to(torch.float32)  # transformers would keep uint8; the model needs float


@lru_cache(maxsize=32)
def _grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every (columns, rows) with min..max tiles, by tile count (stable order as in transformers)."""
    grids = [
        (cols, rows)
        for cols in range(1, max_tiles + 1)
        for rows in range(1, max_tiles + 1)
        if min_tiles <= cols * rows <= max_tiles
    ]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def tile_grid(
    height: int, width: int, tile_height: int, tile_width: int, min_tiles: int, max_tiles: int
) -> tuple[int, int]:
    """(columns, rows) whose aspect ratio is closest to the image's; on a tie, more tiles win while the
    grid's area stays under twice the image's (GotOcr2's get_optimal_tiled_canvas)."""
    aspect_ratio = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for grid in _grids(min_tiles, max_tiles):
        diff = abs(aspect_ratio - grid[0] / grid[1])
        if diff < best_diff:
            best_diff = diff
            best = grid
        elif diff == best_diff and area > 0.5 * tile_height * tile_width * grid[0] * grid[1]:
            best = grid
    return best
