"""Pixel masks for a camera's regions (the privacy mask polygon), shared by the analytics and the
pictures the device writes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def polygon_mask(polygon: Sequence[tuple[int, int]] | None, width: int, height: int) -> np.ndarray | None:
    """A ``height`` x ``width`` bool array, True inside ``polygon`` (pixels); None for no polygon."""
    if not polygon:
        return None
    import cv2  # lazily: a loudspeaker never loads OpenCV

    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [np.asarray(polygon, np.int32).reshape(-1, 1, 2)], 255)
    return canvas.astype(bool)


def black_out(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``image`` with the pixels under ``mask`` set to black (a copy; the input is left alone)."""
    if mask is None:
        return image
    out = image.copy()
    out[mask] = 0
    return out
