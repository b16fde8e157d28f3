"""edge/views.py: the test-time views of a face crop (zoom matrices, mirror images, fixed buffers)."""
import numpy as np
import pytest

from edge.views import FaceViews, zoom_matrix


def test_zoom_matrix_rows_are_interpolation_weights_inside_the_centre():
    m = zoom_matrix(48, 1.1)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    used = np.nonzero(m.any(axis=0))[0]
    assert used.min() == 2 and used.max() == 45  # the central 44 of 48 pixels
    flat = np.full((48, 48), 3.0, np.float32)
    np.testing.assert_allclose(m @ flat @ m.T, flat, atol=1e-5)


def test_zoom_matrix_is_torch_bilinear_resize_of_the_centre():
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 1, 48, 48)
    m = torch.from_numpy(zoom_matrix(48, 1.1))
    centre = x[..., 2:46, 2:46]
    ref = torch.nn.functional.interpolate(centre, size=(48, 48), mode="bilinear", align_corners=False)
    assert float((m @ x @ m.T - ref).abs().max()) < 1e-4


def test_views_are_crop_zooms_and_mirrors_in_fixed_buffers():
    rng = np.random.default_rng(0)
    views = FaceViews(48, mirror=True, zooms=(1.1,))
    assert len(views) == 4 and len(FaceViews(48, mirror=True)) == 2 and len(FaceViews(48, mirror=False)) == 1
    x = rng.standard_normal((1, 1, 48, 48)).astype(np.float32)
    first = views(x)
    ids = [id(v) for v in first]
    np.testing.assert_array_equal(first[0], x)
    m = zoom_matrix(48, 1.1)
    np.testing.assert_allclose(first[1][0, 0], m @ x[0, 0] @ m.T, atol=1e-5)
    np.testing.assert_array_equal(first[2], x[..., ::-1])
    np.testing.assert_array_equal(first[3], first[1][..., ::-1])
    y = rng.standard_normal((1, 1, 48, 48)).astype(np.float32)
    second = views(y)
    assert [id(v) for v in second] == ids  # no allocation per call
    np.testing.assert_array_equal(second[2], y[..., ::-1])


def test_training_side_views_are_the_runtimes():
    torch = pytest.importorskip("torch")
    from distill.models.students import Ensemble
    x = np.random.default_rng(1).standard_normal((1, 1, 48, 48)).astype(np.float32)
    ours = Ensemble([torch.nn.Identity()], mirror=True, zooms=(1.1,)).views(torch.from_numpy(x))
    for runtime, training in zip(FaceViews(48, mirror=True, zooms=(1.1,))(x), ours, strict=True):
        np.testing.assert_allclose(runtime, training.numpy(), atol=1e-5)


def test_zoom_views_option_is_checked_and_written_into_the_face_spec():
    pytest.importorskip("torch")
    import argparse
    from distill.models.students import zoom_factors
    from distill.ship import input_spec
    assert zoom_factors("1.05,1.1") == (1.05, 1.1) and zoom_factors("") == ()
    for bad in ("0.9", "1", "x", "3"):
        with pytest.raises(argparse.ArgumentTypeError, match="above 1 and at most 2"):
            zoom_factors(bad)
    assert input_spec("face", zoom_views=(1.1,))["zoom_views"] == [1.1]
    assert "zoom_views" not in input_spec("face")
