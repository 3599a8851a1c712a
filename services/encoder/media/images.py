"""Image bytes -> RGB picture -> normalised tiles, equal to transformers' pixel_values.

Decoding matches what the oracle feeds transformers: `transformers.image_utils.load_image` (EXIF transpose,
then PIL `convert("RGB")`, which drops alpha) followed by the processor's `convert_to_rgb`, which composites
any transparency still recorded on the RGB picture (a palette or tRNS colour key) onto white. Tiling matches
GotOcr2ImageProcessor's torchvision backend (see transforms.py).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps

from internvl_serve.common.errors import InvalidMedia, ResourceExhausted
from internvl_serve.encoder.media.config import ImagePreprocess, MediaLimits
from internvl_serve.encoder.media.transforms import rescale_and_normalize, resize, tile_grid

# Pillow format ids we open; anything else (PDF, EPS -> Ghostscript, PSD, ICO, ...) is never even probed.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ACCEPTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"


def _pixels(count: int) -> str:
    return f"{count / 1e6:.0f} megapixels" if count >= 1_000_000 else f"{count} pixels"


def _bomb(exc: BaseException, limits: MediaLimits) -> InvalidMedia:
    return InvalidMedia(
        f"image is too large to decode safely ({_reason(exc)}); the limit is "
        f"{_pixels(limits.max_image_pixels)} (server flag --max-image-pixels)"
    )


def _open(data: bytes, limits: MediaLimits) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, limits) from None
    except Image.UnidentifiedImageError:
        raise InvalidMedia(f"the bytes are not an image this service reads; send {_ACCEPTED}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on hostile headers
        raise InvalidMedia(f"image header is corrupt ({_reason(exc)}); send a valid {_ACCEPTED} file") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _check_dimensions(image: Image.Image, limits: MediaLimits) -> None:
    width, height = image.size
    if min(width, height) < limits.min_image_side:
        raise InvalidMedia(f"image is {width}x{height}; each side must be at least {limits.min_image_side} pixel(s)")
    if max(width, height) > limits.max_image_side:
        raise InvalidMedia(
            f"image is {width}x{height}; the longest side may be at most {limits.max_image_side} pixels "
            "(server flag --max-image-side)"
        )
    if width * height > limits.max_image_pixels:
        raise InvalidMedia(
            f"image is {width}x{height} = {_pixels(width * height)}; the limit is "
            f"{_pixels(limits.max_image_pixels)} (server flag --max-image-pixels)"
        )


def _to_rgb(image: Image.Image, do_convert_rgb: bool) -> Image.Image:
    # load_image: EXIF orientation applied, then a plain convert (alpha dropped, not composited).
    image = ImageOps.exif_transpose(image).convert("RGB")
    if do_convert_rgb and ("A" in image.getbands() or image.info.get("transparency") is not None):
        # The processor's convert_to_rgb: a colour key kept by convert("RGB") becomes white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    return image


def decode_image(data: bytes, limits: MediaLimits, *, do_convert_rgb: bool = True) -> Image.Image:
    """Decode an encoded image into an RGB picture, or raise InvalidMedia / ResourceExhausted.

    Animated files give their first frame. Truncated files fail (the whole image is loaded here).
    """
    if not data:
        raise InvalidMedia(f"image data is empty; send the bytes of a {_ACCEPTED} file")
    if len(data) > limits.max_image_bytes:
        raise ResourceExhausted(f"image of {len(data)} bytes is over the {limits.max_image_bytes}-byte limit")
    # Pillow's own guard raises DecompressionBombError from the header (over 2x Image.MAX_IMAGE_PIXELS);
    # our limit is checked right after, still before a single pixel is decoded. Pillow's warning (over
    # 1x) is not turned into an error with warnings filters: those are process-global and not thread-safe.
    image = _open(data, limits)
    try:
        _check_dimensions(image, limits)
        image.load()
        return _to_rgb(image, do_convert_rgb)
    except (InvalidMedia, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, limits) from None
    except Exception as exc:  # noqa: BLE001 - truncated data, bad EXIF, broken chunks: all the client's file
        raise InvalidMedia(
            f"image could not be decoded ({_reason(exc)}); the file is truncated or corrupt: send a complete "
            f"{_ACCEPTED} file"
        ) from None
    finally:
        image.close()


def _as_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W], contiguous, as TorchvisionBackend.process_image lays a PIL image out."""
    if isinstance(image, torch.Tensor):
        return image.contiguous()
    if image.mode != "RGB":
        raise ValueError(f"image_to_tiles needs an RGB picture (decode_image makes one), got mode {image.mode}")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def image_to_tiles(image: Image.Image | torch.Tensor, pp: ImagePreprocess) -> torch.Tensor:
    """RGB picture -> float32 [num_tiles, 3, tile_h, tile_w]: the grid tiles row by row, then the thumbnail."""
    batch = _as_tensor(image)[None]  # transformers stacks same-shape images: [1, 3, H, W]
    if pp.crop_to_patches:
        tiles = _crop_to_tiles(batch, pp)
    else:
        tiles = batch
    if pp.do_resize:
        tiles = resize(tiles, pp.tile_height, pp.tile_width, pp.resample)
    return rescale_and_normalize(
        tiles,
        do_rescale=pp.do_rescale,
        rescale_factor=pp.rescale_factor,
        do_normalize=pp.do_normalize,
        image_mean=pp.image_mean,
        image_std=pp.image_std,
    )


def _crop_to_tiles(batch: torch.Tensor, pp: ImagePreprocess) -> torch.Tensor:
    """GotOcr2ImageProcessor.crop_image_to_patches for one image: [1, 3, H, W] -> [n, 3, tile_h, tile_w]."""
    height, width = batch.shape[-2:]
    th, tw = pp.tile_height, pp.tile_width
    cols, rows = tile_grid(height, width, th, tw, pp.min_tiles, pp.max_tiles)
    canvas = resize(batch, th * rows, tw * cols, pp.resample)
    tiles = []
    for i in range(cols * rows):
        col, row = i % cols, i // cols
        tiles.append(canvas[..., row * th : (row + 1) * th, col * tw : (col + 1) * tw])
    if pp.use_thumbnail and len(tiles) != 1:
        tiles.append(resize(batch, th, tw, pp.resample))
    # [n, 1, 3, th, tw] -> [1, n, ...] -> the n tiles, contiguous as transformers leaves them
    return torch.stack(tiles, dim=0).transpose(0, 1).contiguous()[0]
