"""Test-time views of a face crop: the answer a face bundle gives is the mean over them.

In:  a standardized crop [1, 1, S, S] and the bundle's `input.mirror_average` and
     `input.zoom_views` (e.g. [1.1]).
Out: `FaceViews(x)` -> the crop itself, its centre enlarged by each zoom factor, and (with
     mirror averaging) the mirror image of each of those. Buffers are allocated once and
     overwritten on every call.

Both views were chosen on the FER2013 validation split (docs/students.md): faces are
left-right symmetric in what they express, and a slightly tighter crop (the central 44 of 48
pixels enlarged back to 48) shows the model the face at a second scale. The same matrices
make the views in training-side scoring (distill.models.students.Ensemble), so the figures
measured there are the runtime's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge.bundle import Bundle


def is_zoom_factor(z: object) -> bool:
    """A zoom view's factor: a number above 1 (a tighter crop) and at most 2."""
    return isinstance(z, (int, float)) and not isinstance(z, bool) and 1 < z <= 2


def zoom_matrix(size: int, factor: float) -> np.ndarray:
    """[size, size] bilinear resampling that enlarges the central round(size / factor) pixels
    of a side to `size` (half-pixel centres, edge pixels repeated; torch's interpolate with
    align_corners=False): a zoomed crop is `M @ crop @ M.T`."""
    inner = round(size / factor)
    offset = (size - inner) // 2
    src = np.maximum((np.arange(size) + 0.5) * inner / size - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, inner - 1)
    weight = (src - lo).astype(np.float32)
    rows = np.arange(size)
    m = np.zeros((size, size), np.float32)
    np.add.at(m, (rows, offset + lo), 1.0 - weight)
    np.add.at(m, (rows, offset + hi), weight)
    return m


class FaceViews:
    """The views of one crop, in preallocated buffers: [crop, zooms..., mirror of each]."""

    def __init__(self, size: int, mirror: bool, zooms: tuple[float, ...] = ()) -> None:
        matrices = [zoom_matrix(size, z) for z in zooms]
        self._zooms = [(m, m.T.copy()) for m in matrices]
        self._tmp = np.zeros((size, size), np.float32)
        count = (1 + len(zooms)) * (2 if mirror else 1)
        self._views: list[np.ndarray] = [np.zeros((1, 1, size, size), np.float32) for _ in range(count)]
        self._mirror = mirror

    def __len__(self) -> int:
        return len(self._views)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """The views of `x` [1, 1, S, S] (the first is a copy of `x`)."""
        views = self._views
        np.copyto(views[0], x)
        for i, (m, m_t) in enumerate(self._zooms, start=1):
            np.matmul(m, x[0, 0], out=self._tmp)
            np.matmul(self._tmp, m_t, out=views[i][0, 0])
        if self._mirror:
            half = len(views) // 2
            for i in range(half):
                np.copyto(views[half + i], views[i][..., ::-1])
        return views


def views_of(bundle: Bundle) -> FaceViews | None:
    """The views a face bundle's answer is the mean over, or None where the bundle answers its
    input as it is (audio, or a face bundle that asks for no views)."""
    if bundle.modality != "face" or not (bundle.mirror_average or bundle.zoom_views):
        return None
    return FaceViews(bundle.input_shape[-1], bundle.mirror_average, bundle.zoom_views)
