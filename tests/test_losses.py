import logging

import pytest
import torch

from pipeline.core.config import Config
from pipeline.core.weights import WeightsError
from pipeline.training.losses import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LossWeights,
    PerceptualLoss,
    discriminator_loss,
    generator_loss,
    l1_loss,
    lsgan_loss,
    minmax_scale,
    vgg19_features,
)
from pipeline.training.step import resolve_vgg_weights


def test_lsgan_and_l1_equal_hand_computation():
    p = torch.tensor([[0.2, 0.9], [-0.5, 1.5]])
    assert lsgan_loss(p, True).item() == pytest.approx((0.64 + 0.01 + 2.25 + 0.25) / 4)
    assert lsgan_loss(p, False).item() == pytest.approx((0.04 + 0.81 + 0.25 + 2.25) / 4)
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert l1_loss(p, q).item() == pytest.approx((0.2 + 0.1 + 1.0 + 1.0) / 4)
    d = discriminator_loss(d_real=p, d_fake=q)
    assert d["d_total"].item() == pytest.approx(
        0.5 * (lsgan_loss(p, True) + lsgan_loss(q, False)).item()
    )


def test_minmax_scale_per_image():
    x = torch.stack([torch.full((3, 2, 2), 4.0), torch.arange(12.0).view(3, 2, 2) - 3])
    x[0, 0, 0, 0] = 2.0
    out = minmax_scale(x)
    assert out[0, 0, 0, 0] == 0 and out[0, 1, 1, 1] == 1
    assert torch.allclose(out[1], torch.arange(12.0).view(3, 2, 2) / 11)
    assert torch.isfinite(minmax_scale(torch.zeros(1, 3, 2, 2))).all()


def test_perceptual_equals_hand_computation_with_random_vgg_slice():
    torch.manual_seed(0)
    features = vgg19_features(None)
    loss = PerceptualLoss(features)
    fake = (torch.rand(2, 3, 32, 24) * 2 - 1).requires_grad_()
    real = torch.rand(2, 3, 32, 24) * 2 - 1

    def prep(img):  # each image by itself: stretch to [0, 1], then ImageNet statistics
        lo, hi = img.min(), img.max()
        s = (img - lo) / (hi - lo)
        return (s - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
            3, 1, 1
        )

    expected = 0.0
    for cut in (4, 9):
        head = torch.nn.Sequential(*list(features)[:cut])
        f = head(torch.stack([prep(i) for i in fake]))
        r = head(torch.stack([prep(i) for i in real]))
        expected = expected + (f - r).abs().mean()
    got = loss(fake, real)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    got.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())


def test_generator_loss_combines_weighted_terms():
    torch.manual_seed(1)
    fake, real = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    d_fake = torch.rand(2, 1, 3, 3)
    w = LossWeights(l1=5.0, gan=1.0, perceptual=5.0)
    perceptual = PerceptualLoss(vgg19_features(None))
    g = generator_loss(fake, real, d_fake, w, perceptual)
    hand = 5 * (fake - real).abs().mean() + ((d_fake - 1) ** 2).mean() + 5 * perceptual(fake, real)
    assert g["g_total"].item() == pytest.approx(hand.item(), rel=1e-6)
    assert "g_perceptual" not in generator_loss(fake, real, d_fake, w, None)


def test_perceptual_auto_warns_required_raises_off_skips(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    cfg = Config()
    cfg.weights.dir = str(tmp_path / "weights")
    with caplog.at_level(logging.WARNING):
        path, note = resolve_vgg_weights(cfg)
    assert path is None and note.startswith("skipped") and "vgg19-dcbb9e9d.pth" in note
    assert sum("WITHOUT the perceptual term" in r.message for r in caplog.records) == 1
    cfg.train.perceptual = "required"
    with pytest.raises(WeightsError, match="vgg19-dcbb9e9d.pth"):
        resolve_vgg_weights(cfg)
    cfg.train.perceptual = "off"
    assert resolve_vgg_weights(cfg) == (None, "off by config")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "vgg19-dcbb9e9d.pth").write_bytes(b"x")
    cfg.train.perceptual = "required"
    assert resolve_vgg_weights(cfg)[0] == tmp_path / "weights" / "vgg19-dcbb9e9d.pth"
