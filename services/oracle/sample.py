"""A deterministic stand-in picture for the model card's example photo (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def sample_image(width: int = 640, height: int = 480) -> Image.Image:
    """A sky-to-grass gradient with two pink ovals ("two cats on a pink blanket", roughly)."""
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    top, bottom = np.array([120, 170, 230]), np.array([90, 160, 70])
    pixels = (top * (1 - y) + bottom * y).repeat(width, axis=1).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((80, 260, 300, 420), fill=(230, 150, 180))
    draw.ellipse((340, 250, 580, 430), fill=(220, 140, 170))
    return image
