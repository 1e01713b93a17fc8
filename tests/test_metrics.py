"""Metrics on inputs with known answers."""

import math

import numpy as np
import torch

from dipgo.evaluate.metrics import (
    feature_stats,
    frechet_distance,
    inception_features,
    psnr,
    ssim,
)
from dipgo.zoo.mnist import classify_digits, load_mnist


def test_psnr_identical_is_capped_and_known_value():
    x = torch.rand(2, 1, 8, 8)
    assert psnr(x, x).tolist() == [100.0, 100.0]  # documented cap instead of infinity
    y = torch.zeros(1, 1, 4, 4)
    z = torch.full((1, 1, 4, 4), 0.1)
    assert math.isclose(psnr(y, z).item(), 20.0, rel_tol=1e-5)  # 10 log10(1 / 0.01)


def test_ssim_identical_is_one_and_drops_with_noise():
    x = torch.rand(3, 1, 32, 32)
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert (ssim(x, noisy) < 0.9).all()
    x.requires_grad_(True)
    (1 - ssim(x, noisy)).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_classifier_reads_real_mnist():
    images, labels = load_mnist()
    pred = classify_digits((images[::10] + 1) / 2)
    assert (pred == labels[::10]).float().mean() > 0.97


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    mu, sigma = feature_stats(a)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    # shifting the mean by d adds |d|^2
    assert math.isclose(frechet_distance(mu, sigma, mu + 2.0, sigma), 8 * 4.0, rel_tol=1e-6)


def test_frechet_distance_matches_the_general_matrix_square_root():
    """The eigen form equals Tr((S1 S2)^(1/2)) from scipy's sqrtm, also with fewer samples than features."""
    from scipy import linalg

    rng = np.random.default_rng(3)
    for n in (200, 20):  # 20 samples of 40 features: both covariances singular
        a, b = rng.normal(size=(n, 40)), rng.normal(size=(n, 40)) @ rng.normal(size=(40, 40)) * 0.3 + 0.1
        (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
        root = linalg.sqrtm(s1 @ s2).real
        expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
        assert math.isclose(frechet_distance(mu1, s1, mu2, s2), expected, rel_tol=1e-6), n


def test_fid_of_a_set_against_itself_is_about_zero():
    images, _ = load_mnist()
    x = (images[:24] + 1) / 2
    feats = inception_features(x)
    assert feats.shape == (24, 2048)
    mu, sigma = feature_stats(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-3
    other = feature_stats(inception_features(x.flip(-1)))
    assert frechet_distance(mu, sigma, *other) > 1.0


def test_fid_statistics_files_round_trip_compactly(tmp_path):
    """Shipped statistics keep mu and the upper triangle in float32: the FID they give stays within 1e-3."""
    import pytest

    from dipgo.errors import DipgoError
    from dipgo.evaluate.metrics import load_stats, save_stats

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16)) + 0.3
    mu, sigma = feature_stats(a)
    path = save_stats(tmp_path / "ref.npz", mu, sigma, source="test")
    mu2, sigma2 = load_stats(path)
    np.testing.assert_allclose(sigma2, sigma2.T)
    other = feature_stats(b)
    assert abs(frechet_distance(*other, mu, sigma) - frechet_distance(*other, mu2, sigma2)) < 1e-3
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DipgoError, match="corrupt"):
        load_stats(path)


def test_shipped_zoo_statistics_load():
    from dipgo import zoo
    from dipgo.evaluate.metrics import load_stats

    mu, sigma = load_stats(zoo.resolve("mnist-sd").fid_reference)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048) and np.isfinite(sigma).all()
