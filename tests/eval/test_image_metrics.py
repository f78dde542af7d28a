"""PSNR / SSIM agree with skimage.metrics on random images, per image, and compile under jit."""

import jax
import numpy as np
import pytest

from mmjax.eval.image_metrics import psnr, ssim


def _pair(shape, max_val, seed=0):
    rng = np.random.default_rng(seed)
    smooth = rng.uniform(0, max_val, shape)
    smooth = (smooth + np.roll(smooth, 1, axis=1) + np.roll(smooth, 1, axis=2)) / 3  # some structure
    noisy = np.clip(smooth + rng.normal(0, 0.1 * max_val, shape), 0, max_val)
    return smooth.astype(np.float32), noisy.astype(np.float32)


@pytest.mark.parametrize("max_val", [1.0, 255.0])
def test_match_skimage(max_val):
    metrics = pytest.importorskip("skimage.metrics")
    a, b = _pair((3, 32, 40, 3), max_val)
    got_psnr = np.asarray(psnr(a, b, max_val))
    got_ssim = np.asarray(ssim(a, b, max_val))
    assert got_psnr.shape == got_ssim.shape == (3,)
    for i in range(3):
        want_psnr = metrics.peak_signal_noise_ratio(a[i].astype(np.float64), b[i].astype(np.float64),
                                                    data_range=max_val)
        want_ssim = metrics.structural_similarity(
            a[i].astype(np.float64), b[i].astype(np.float64), data_range=max_val, channel_axis=-1,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        np.testing.assert_allclose(got_psnr[i], want_psnr, rtol=1e-5)
        np.testing.assert_allclose(got_ssim[i], want_ssim, atol=1e-5)


def test_identical_and_jit():
    a, b = _pair((2, 16, 16, 1), 1.0, seed=1)
    assert np.all(np.isinf(np.asarray(psnr(a, a))))
    np.testing.assert_allclose(np.asarray(ssim(a, a)), 1.0, atol=1e-6)
    jitted = jax.jit(lambda x, y: (psnr(x, y), ssim(x, y)))
    p, s = jitted(a, b)
    assert p.shape == s.shape == (2,) and np.all(np.asarray(s) < 1.0)
    with pytest.raises(ValueError):
        ssim(a[:, :8, :8], b[:, :8, :8])
