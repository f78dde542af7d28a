"""Frechet Inception Distance: streaming feature statistics, the Frechet distance, and the FID Inception network.

FID(r, g) = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between Gaussians fitted to 2048-d pool
features of real and generated (or reconstructed: "rFID") images. The matrix square root is scipy's `sqrtm`,
in float64; a singular product (non-finite or inaccurate root) gets `eps` added to both diagonals, and a
numerically complex root (tiny imaginary parts) is replaced by its real part, refused if that part is not tiny.

The feature extractor is the "FID Inception" (the TF 2015-12-05 graph that every published FID uses, as ported
in the pytorch-fid package): torchvision's Inception-v3 layout with average pools that exclude padding in
Mixed_5*, 6b-e and 7b, and a max pool in Mixed_7c's pool branch. mmjax never downloads it: `load_inception(path)`
reads a LOCAL safetensors file with pytorch-fid's state-dict names (`Conv2d_1a_3x3.conv.weight`,
`Mixed_5b.branch1x1.bn.running_mean`, ...; `fc.*` is ignored), made once with torch:

    from pytorch_fid.inception import fid_inception_v3; import safetensors.torch as st
    st.save_file(fid_inception_v3().state_dict(), "pt_inception_fid.safetensors")

Inputs are NHWC images in [-1, 1] (what the tokenizer produces), resized bilinearly to 299x299 as pytorch-fid
does. Numbers are comparable with published ones only with those weights and >= 10k-50k images.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

BN_EPS = 1e-3


class FeatureStats:
    """Running float64 sum and sum of outer products of feature rows; `mean_cov()` gives (mu, unbiased cov)."""

    def __init__(self):
        self.count, self.total, self.outer = 0, None, None

    def add(self, features: np.ndarray) -> None:
        f = np.asarray(features, np.float64).reshape(-1, np.shape(features)[-1])
        if self.total is None:
            self.total, self.outer = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        self.count += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"FID needs at least 2 feature rows, got {self.count}")
        mu = self.total / self.count
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, cov


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)), float64 (scipy.linalg.sqrtm)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"FID statistics disagree: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    product = sigma1 @ sigma2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular products are checked just below
        covmean = linalg.sqrtm(product)
        residual = np.linalg.norm(covmean @ covmean - product) / max(np.linalg.norm(product), 1e-30)
        if not np.isfinite(covmean).all() or residual > 1e-3:
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


# ------------------------------------------------------------------------------------ the FID Inception
def _conv_specs() -> dict[str, tuple[int, int, tuple[int, int], int, tuple[int, int]]]:
    """Every BasicConv2d: name -> (in, out, (kh, kw), stride, (pad_h, pad_w)), in torchvision/pytorch-fid naming."""
    s: dict[str, tuple] = {}

    def add(name: str, cin: int, cout: int, k: tuple[int, int] = (1, 1), stride: int = 1,
            pad: tuple[int, int] = (0, 0)) -> None:
        s[name] = (cin, cout, k, stride, pad)

    add("Conv2d_1a_3x3", 3, 32, (3, 3), 2)
    add("Conv2d_2a_3x3", 32, 32, (3, 3))
    add("Conv2d_2b_3x3", 32, 64, (3, 3), pad=(1, 1))
    add("Conv2d_3b_1x1", 64, 80)
    add("Conv2d_4a_3x3", 80, 192, (3, 3))
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        add(f"{name}.branch1x1", cin, 64)
        add(f"{name}.branch5x5_1", cin, 48)
        add(f"{name}.branch5x5_2", 48, 64, (5, 5), pad=(2, 2))
        add(f"{name}.branch3x3dbl_1", cin, 64)
        add(f"{name}.branch3x3dbl_2", 64, 96, (3, 3), pad=(1, 1))
        add(f"{name}.branch3x3dbl_3", 96, 96, (3, 3), pad=(1, 1))
        add(f"{name}.branch_pool", cin, pool)
    add("Mixed_6a.branch3x3", 288, 384, (3, 3), 2)
    add("Mixed_6a.branch3x3dbl_1", 288, 64)
    add("Mixed_6a.branch3x3dbl_2", 64, 96, (3, 3), pad=(1, 1))
    add("Mixed_6a.branch3x3dbl_3", 96, 96, (3, 3), 2)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        add(f"{name}.branch1x1", 768, 192)
        add(f"{name}.branch7x7_1", 768, c7)
        add(f"{name}.branch7x7_2", c7, c7, (1, 7), pad=(0, 3))
        add(f"{name}.branch7x7_3", c7, 192, (7, 1), pad=(3, 0))
        add(f"{name}.branch7x7dbl_1", 768, c7)
        for i, (k, p) in enumerate((((7, 1), (3, 0)), ((1, 7), (0, 3)), ((7, 1), (3, 0)), ((1, 7), (0, 3)))):
            add(f"{name}.branch7x7dbl_{i + 2}", c7, 192 if i == 3 else c7, k, pad=p)
        add(f"{name}.branch_pool", 768, 192)
    add("Mixed_7a.branch3x3_1", 768, 192)
    add("Mixed_7a.branch3x3_2", 192, 320, (3, 3), 2)
    add("Mixed_7a.branch7x7x3_1", 768, 192)
    add("Mixed_7a.branch7x7x3_2", 192, 192, (1, 7), pad=(0, 3))
    add("Mixed_7a.branch7x7x3_3", 192, 192, (7, 1), pad=(3, 0))
    add("Mixed_7a.branch7x7x3_4", 192, 192, (3, 3), 2)
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        add(f"{name}.branch1x1", cin, 320)
        add(f"{name}.branch3x3_1", cin, 384)
        add(f"{name}.branch3x3_2a", 384, 384, (1, 3), pad=(0, 1))
        add(f"{name}.branch3x3_2b", 384, 384, (3, 1), pad=(1, 0))
        add(f"{name}.branch3x3dbl_1", cin, 448)
        add(f"{name}.branch3x3dbl_2", 448, 384, (3, 3), pad=(1, 1))
        add(f"{name}.branch3x3dbl_3a", 384, 384, (1, 3), pad=(0, 1))
        add(f"{name}.branch3x3dbl_3b", 384, 384, (3, 1), pad=(1, 0))
        add(f"{name}.branch_pool", cin, 192)
    return s


CONV_SPECS = _conv_specs()
Params = Mapping[str, tuple[jax.Array, jax.Array, jax.Array]]  # name -> (HWIO kernel, BN scale, BN shift)


def inception_params_from_state_dict(state: Mapping[str, np.ndarray], source: str = "Inception weights") -> dict:
    """pytorch-fid state dict -> {name: (HWIO kernel, folded BN scale, folded BN shift)}; strict accounting."""
    from mmjax.convert.safetensors_io import KeyConsumer

    consumer = KeyConsumer({k: np.asarray(v) for k, v in state.items()}, source,
                           ignore=lambda k: k.startswith("fc.") or k.endswith("num_batches_tracked"))
    params = {}
    for name, (cin, cout, (kh, kw), _, _) in CONV_SPECS.items():
        w = consumer.take(f"{name}.conv.weight", (cout, cin, kh, kw))
        bn = [consumer.take(f"{name}.bn.{p}", (cout,)) for p in ("weight", "bias", "running_mean", "running_var")]
        if w is None or any(b is None for b in bn):
            continue
        gamma, beta, mean, var = (np.asarray(b, np.float64) for b in bn)
        scale = gamma / np.sqrt(var + BN_EPS)
        params[name] = (w.transpose(2, 3, 1, 0).astype(np.float32), scale.astype(np.float32),
                        (beta - mean * scale).astype(np.float32))
    consumer.finish()
    return params


def random_inception_params(seed: int = 0) -> dict:
    """He-initialised weights of the right shapes (tests, benchmarks): NOT usable for real FID numbers."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (cin, cout, (kh, kw), _, _) in CONV_SPECS.items():
        w = rng.normal(0, np.sqrt(2.0 / (cin * kh * kw)), (kh, kw, cin, cout)).astype(np.float32)
        out[name] = (w, np.ones(cout, np.float32), np.zeros(cout, np.float32))
    return out


def _conv(params: Params, name: str, x: jax.Array) -> jax.Array:
    _, _, _, stride, (ph, pw) = CONV_SPECS[name]
    w, scale, shift = params[name]
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), ((ph, ph), (pw, pw)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y * scale + shift)


def _max_pool(x: jax.Array, stride: int = 2, pad: int = 0) -> jax.Array:
    p = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), p)


def _avg_pool_excl_pad(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool, padding 1, dividing by the number of real (non-padding) pixels."""
    p = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), p)
    count = jax.lax.reduce_window(jnp.ones_like(x[:1, :, :, :1]), 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), p)
    return total / count


def inception_features(params: Params, images: jax.Array) -> jax.Array:
    """NHWC images in [-1, 1] -> (B, 2048) float32 pool3 features of the FID Inception."""
    c = functools.partial(_conv, params)
    x = jax.image.resize(images.astype(jnp.float32), (images.shape[0], 299, 299, images.shape[-1]), "bilinear",
                         antialias=False)
    x = c("Conv2d_2b_3x3", c("Conv2d_2a_3x3", c("Conv2d_1a_3x3", x)))
    x = c("Conv2d_4a_3x3", c("Conv2d_3b_1x1", _max_pool(x)))
    x = _max_pool(x)
    for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = jnp.concatenate([c(f"{m}.branch1x1", x), c(f"{m}.branch5x5_2", c(f"{m}.branch5x5_1", x)),
                             c(f"{m}.branch3x3dbl_3", c(f"{m}.branch3x3dbl_2", c(f"{m}.branch3x3dbl_1", x))),
                             c(f"{m}.branch_pool", _avg_pool_excl_pad(x))], -1)
    m = "Mixed_6a"
    x = jnp.concatenate([c(f"{m}.branch3x3", x),
                         c(f"{m}.branch3x3dbl_3", c(f"{m}.branch3x3dbl_2", c(f"{m}.branch3x3dbl_1", x))),
                         _max_pool(x)], -1)
    for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        dbl = x
        for i in range(1, 6):
            dbl = c(f"{m}.branch7x7dbl_{i}", dbl)
        x = jnp.concatenate([c(f"{m}.branch1x1", x),
                             c(f"{m}.branch7x7_3", c(f"{m}.branch7x7_2", c(f"{m}.branch7x7_1", x))),
                             dbl, c(f"{m}.branch_pool", _avg_pool_excl_pad(x))], -1)
    m = "Mixed_7a"
    b7 = x
    for i in range(1, 5):
        b7 = c(f"{m}.branch7x7x3_{i}", b7)
    x = jnp.concatenate([c(f"{m}.branch3x3_2", c(f"{m}.branch3x3_1", x)), b7, _max_pool(x)], -1)
    for m, pool in (("Mixed_7b", _avg_pool_excl_pad), ("Mixed_7c", functools.partial(_max_pool, stride=1, pad=1))):
        b3 = c(f"{m}.branch3x3_1", x)
        dbl = c(f"{m}.branch3x3dbl_2", c(f"{m}.branch3x3dbl_1", x))
        x = jnp.concatenate([c(f"{m}.branch1x1", x), c(f"{m}.branch3x3_2a", b3), c(f"{m}.branch3x3_2b", b3),
                             c(f"{m}.branch3x3dbl_3a", dbl), c(f"{m}.branch3x3dbl_3b", dbl),
                             c(f"{m}.branch_pool", pool(x))], -1)
    return jnp.mean(x, axis=(1, 2))


def load_inception(path: str) -> dict:
    """Reads local FID-Inception weights (safetensors, pytorch-fid names); never downloads anything."""
    from mmjax.convert.safetensors_io import load_safetensors

    return inception_params_from_state_dict(load_safetensors(path), source=str(path))


def inception_feature_fn(path_or_params: str | Params) -> Callable[[jax.Array], jax.Array]:
    """A jit-compiled `images in [-1, 1] -> (B, 2048)` with the weights bound (loaded once)."""
    params = load_inception(path_or_params) if isinstance(path_or_params, str) else path_or_params
    params = jax.tree.map(jnp.asarray, params)
    fn = jax.jit(inception_features)
    return lambda images: fn(params, images)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two (N, D) feature arrays."""
    stats = []
    for f in (real, fake):
        s = FeatureStats()
        s.add(f)
        stats.append(s.mean_cov())
    return frechet_distance(*stats[0], *stats[1])
