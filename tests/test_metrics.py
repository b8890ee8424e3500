"""Metric maths against direct computations, and the networks built with random weights."""

import numpy as np
import pytest
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.core.imaging import load_rgb
from pipeline.metrics.fid import fid_from_features
from pipeline.metrics.inception_score import inception_score
from pipeline.metrics.pckh import head_size, pckh_counts, pckh_score
from pipeline.metrics.psnr import psnr_batch
from pipeline.metrics.ssim import ssim_batch


def _noisy(a, rng, amount):
    return np.clip(a.astype(int) + rng.integers(-amount, amount + 1, a.shape), 0, 255).astype(
        np.uint8
    )


@pytest.mark.parametrize("shape", [(5, 32, 24, 3), (2, 7, 7, 3), (3, 64, 41, 1)])
def test_ssim_equals_skimage_on_random_images(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = _noisy(a, rng, 60)
    b[0] = a[0]  # identical pair: exactly 1
    a[-1] = 255  # a flat image: zero variance
    ref = [structural_similarity(x, y, channel_axis=-1) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(ssim_batch(a, b), ref, rtol=0, atol=1e-6)
    assert ssim_batch(a, b)[0] == pytest.approx(1.0, abs=1e-12)


def test_ssim_equals_skimage_on_synthetic_images(synth_root):
    paths = sorted(synth_root.glob("img/**/*.jpg"))[:6]
    real = np.stack([np.asarray(load_rgb(p)) for p in paths])
    fake = np.roll(_noisy(real, np.random.default_rng(0), 20), 3, axis=2)
    ref = [structural_similarity(x, y, channel_axis=-1) for x, y in zip(real, fake, strict=True)]
    np.testing.assert_allclose(ssim_batch(real, fake), ref, rtol=0, atol=1e-6)


def test_ssim_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        ssim_batch(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 9, 3), np.uint8))


def test_psnr_formula_and_skimage():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 16, 12, 3), dtype=np.uint8)
    b = _noisy(a, rng, 30)
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(psnr_batch(a, b), 10 * np.log10(255.0**2 / mse), rtol=1e-12)
    np.testing.assert_allclose(
        psnr_batch(a, b), [peak_signal_noise_ratio(x, y) for x, y in zip(a, b, strict=True)]
    )
    assert psnr_batch(a[:1], a[:1])[0] == np.inf


def _kp(points: dict[int, tuple[int, int]]):
    x, y = np.full(18, -1), np.full(18, -1)
    for k, (px, py) in points.items():
        x[k], y[k] = px, py
    return x, y


def test_pckh_on_hand_made_keypoints():
    # Head box from nose (50, 20) and neck (60, 40): 10 x 20 -> thresholds |dx| < 5, |dy| < 10.
    rx, ry = _kp({0: (50, 20), 1: (60, 40), 2: (40, 50), 3: (30, 70), 4: (20, 90)})
    assert head_size(rx, ry) == (10.0, 20.0)
    fx, fy = _kp({0: (54, 29), 1: (65, 40), 2: (40, 50), 4: (20, 90), 8: (1, 1)})
    # nose ok (4 < 5, 9 < 10); neck |dx| = 5 not < 5; r-shoulder ok; elbow missing; wrist ok.
    assert pckh_counts(rx, ry, fx, fy) == (3, 5)
    # Only one head keypoint: not counted.
    sx, sy = _kp({0: (50, 20), 2: (40, 50)})
    assert head_size(sx, sy) is None
    assert pckh_counts(sx, sy, fx, fy) is None
    assert pckh_score(np.array([3, 4]), np.array([5, 5])) == pytest.approx(0.7)
    assert np.isnan(pckh_score(np.array([]), np.array([])))


def test_inception_score_against_direct_computation():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(20, 10))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    py = p.mean(0)
    direct = np.exp(np.mean([np.sum(pi * np.log(pi / py)) for pi in p]))
    assert inception_score(p) == pytest.approx(direct, rel=1e-9)
    assert inception_score(np.tile(p[:1], (5, 1))) == pytest.approx(1.0)  # one class profile: IS 1
    assert inception_score(np.eye(10)) == pytest.approx(
        10.0
    )  # confident, all classes: IS = classes


def test_frechet_distance_against_eigenvalues():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(40, 6)), rng.normal(0.5, 1.5, size=(30, 6))
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    # Tr sqrt(S1 S2) = sum of square roots of the eigenvalues of S1 S2 (real, non-negative).
    tr_sqrt = np.sqrt(np.clip(linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert fid_from_features(real, fake) == pytest.approx(direct, rel=1e-6)
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(real[:1], fake)


@pytest.fixture(scope="module")
def two_images(synth_root):
    return [np.asarray(load_rgb(p)) for p in sorted(synth_root.glob("img/**/*.jpg"))[:2]]


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_lpips_runs_with_random_backbones(net, two_images, tmp_path):
    import torch

    from pipeline.metrics.lpips_metric import backbone_state, build_lpips, lpips_distances

    model = build_lpips(net, None)
    d = lpips_distances(model, two_images, two_images[::-1])
    assert d.shape == (2,) and np.all(d > 0) and d[0] == pytest.approx(d[1], rel=1e-5)
    assert lpips_distances(model, two_images, two_images) == pytest.approx([0.0, 0.0], abs=1e-6)
    # A torchvision-named backbone file loads into the lpips slices (same tensors back).
    state = {
        k.replace(k.split(".")[0], "features", 1): v for k, v in model.net.state_dict().items()
    }
    torch.save(state, tmp_path / "backbone.pth")
    loaded = build_lpips(net, tmp_path / "backbone.pth")
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            loaded.net.state_dict().values(), model.net.state_dict().values(), strict=True
        )
    )
    assert backbone_state(model.net, state).keys() == model.net.state_dict().keys()


def test_detection_score_keeps_the_best_person():
    import torch

    from pipeline.metrics.detection_score import best_person_scores

    dets = [
        {"labels": torch.tensor([3, 1, 1]), "scores": torch.tensor([0.99, 0.4, 0.7])},
        {"labels": torch.tensor([2]), "scores": torch.tensor([0.9])},
        {"labels": torch.tensor([], dtype=torch.long), "scores": torch.tensor([])},
    ]
    np.testing.assert_allclose(best_person_scores(dets), [0.7, 0.0, 0.0], rtol=1e-6)


@pytest.mark.slow
def test_network_metrics_with_random_weights(two_images, tmp_path):
    import torch

    from pipeline.metrics.detection_score import build_ssd, person_scores
    from pipeline.metrics.fid import (
        FEATURES,
        build_fid_inception,
        fid_inception3,
        pool3_features,
    )
    from pipeline.metrics.inception_score import build_inception, class_probabilities

    probs = class_probabilities(build_inception(None), two_images)
    assert probs.shape == (2, 1000) and np.allclose(probs.sum(1), 1, atol=1e-5)
    torch.manual_seed(0)
    feats = pool3_features(build_fid_inception(None), two_images)
    assert feats.shape == (2, FEATURES) and np.isfinite(feats).all()
    torch.manual_seed(0)  # the same random network, saved in the official file's key layout
    torch.save(fid_inception3(None).state_dict(), tmp_path / "fid.pth")
    assert np.allclose(
        pool3_features(build_fid_inception(tmp_path / "fid.pth"), two_images), feats, atol=1e-5
    )
    scores = person_scores(build_ssd(None), two_images)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
