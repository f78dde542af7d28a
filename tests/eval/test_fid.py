"""FID math on synthetic Gaussians (closed forms), streaming statistics, and the Inception's structure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.eval import fid


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_identical_gaussians_have_zero_distance():
    rng = np.random.default_rng(0)
    mu, cov = rng.normal(size=16), _random_cov(rng, 16)
    assert abs(fid.frechet_distance(mu, cov, mu, cov)) < 1e-6


def test_shifted_means_with_equal_covariances_give_squared_mean_distance():
    rng = np.random.default_rng(1)
    cov = _random_cov(rng, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    np.testing.assert_allclose(fid.frechet_distance(mu1, cov, mu2, cov), np.sum((mu1 - mu2) ** 2), rtol=1e-6)


def test_scaled_isotropic_covariances_match_the_closed_form():
    # N(0, a I) vs N(0, b I): d * (sqrt(a) - sqrt(b))^2.
    d, a, b = 8, 4.0, 1.0
    got = fid.frechet_distance(np.zeros(d), a * np.eye(d), np.zeros(d), b * np.eye(d))
    np.testing.assert_allclose(got, d * (np.sqrt(a) - np.sqrt(b)) ** 2, rtol=1e-6)


def test_singular_covariances_are_handled():
    cov = np.zeros((4, 4))
    cov[0, 0] = 1.0
    assert np.isfinite(fid.frechet_distance(np.zeros(4), cov, np.ones(4), cov))


def test_streaming_statistics_equal_numpy_and_sampled_fid_is_near_the_truth():
    rng = np.random.default_rng(2)
    d, n = 8, 20_000
    real = rng.normal(size=(n, d))
    fake = rng.normal(size=(n, d)) + 0.5
    stats = fid.FeatureStats()
    for chunk in np.array_split(real, 7):
        stats.add(chunk)
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, real.mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(real, rowvar=False), atol=1e-10)
    assert fid.fid_from_features(real, fake) == pytest.approx(d * 0.25, rel=0.05)


def test_mismatched_statistics_are_refused():
    with pytest.raises(ValueError, match="disagree"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_inception_layout_and_state_dict_mapping():
    # Every conv of the FID Inception from a torch-layout state dict; fc / num_batches_tracked are ignored.
    params = fid.random_inception_params(0)
    state = {}
    for name, (w, scale, shift) in params.items():
        state[f"{name}.conv.weight"] = w.transpose(3, 2, 0, 1)
        state[f"{name}.bn.weight"], state[f"{name}.bn.bias"] = scale * 2.0, shift + 1.0
        state[f"{name}.bn.running_mean"], state[f"{name}.bn.running_var"] = shift + 0.5, np.full_like(scale, 3.0)
        state[f"{name}.bn.num_batches_tracked"] = np.zeros((), np.int64)
    state["fc.weight"], state["fc.bias"] = np.zeros((1008, 2048), np.float32), np.zeros(1008, np.float32)
    loaded = fid.inception_params_from_state_dict(state)
    name = "Mixed_6b.branch7x7dbl_5"
    np.testing.assert_allclose(loaded[name][0], params[name][0])
    np.testing.assert_allclose(loaded[name][1], 2.0 / np.sqrt(3.0 + fid.BN_EPS), rtol=1e-6)
    del state["Mixed_7c.branch_pool.bn.running_var"]
    with pytest.raises(ValueError, match="running_var"):
        fid.inception_params_from_state_dict(state)
    # 2048-d pool features for any input size (images are resized to 299): shape-only, no compute.
    out = jax.eval_shape(fid.inception_features, jax.tree.map(jnp.asarray, params),
                         jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
    assert out.shape == (2, 2048) and out.dtype == jnp.float32
