import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import augment


def test_inception_crop_and_eval_view_shapes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)
    crops = [augment.inception_crop(image, 32, rng) for _ in range(5)]
    assert all(c.shape == (32, 32, 3) and c.dtype == np.uint8 for c in crops)
    assert len({c.tobytes() for c in crops}) == 5
    assert augment.resize_center_crop(image, 40, 32).shape == (32, 32, 3)


def test_random_shift_moves_content_and_pads_with_zeros():
    image = np.zeros((8, 8, 1), np.float32)
    image[3, 4] = 1
    shifted = [augment.random_shift(image, 1, np.random.default_rng(s)) for s in range(20)]
    positions = {tuple(np.argwhere(s[..., 0] == 1)[0]) for s in shifted}
    assert positions <= {(3 + dy, 4 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)} and len(positions) > 3


def test_mixup_keeps_label_mass_and_mixes_images():
    images = jnp.stack([jnp.zeros((4, 4, 3)), jnp.ones((4, 4, 3))])
    labels = jax.nn.one_hot(jnp.array([0, 1]), 3)
    mixed_images, mixed_labels = augment.mixup(jax.random.key(0), images, labels, alpha=0.2)
    np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, rtol=1e-6)
    ratio = float(mixed_labels[0, 0])
    assert 0.5 <= ratio <= 1.0
    np.testing.assert_allclose(mixed_images[0], 1 - ratio, rtol=1e-6)
