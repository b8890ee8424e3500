"""NetG (multi-scale attention guided generator) and NetD (PatchGAN), with the published
parameter names so the official `netG_<iter>.pth` / `netD_<iter>.pth` state dicts load."""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=False)


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            conv3x3(channels, channels),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            conv3x3(channels, channels),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) + x


def inconv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def down2x(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        ResidualBlock(cout),
    )


def up2x(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        ResidualBlock(cout),
    )


def outconv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(cin) for _ in range(4)], conv1x1(cin, cout), nn.Tanh())


class NetG(nn.Module):
    """Image encoder + pose encoder; the pose features gate the decoder at every scale.

    Input: image in [-1, 1] (N, 3, H, W) and the map pair concat(mapA, mapB) as {0, 1}
    floats (N, 36, H, W); H and W divisible by 16. Output in [-1, 1].
    """

    def __init__(self, in1: int = 3, in2: int = 36, out: int = 3, ngf: int = 64):
        super().__init__()
        widths = [ngf, 2 * ngf, 4 * ngf, 8 * ngf, 16 * ngf]
        self.in1_conv1 = inconv(in1, ngf)
        self.in1_down1 = down2x(widths[0], widths[1])
        self.in1_down2 = down2x(widths[1], widths[2])
        self.in1_down3 = down2x(widths[2], widths[3])
        self.in1_down4 = down2x(widths[3], widths[4])
        self.in2_conv1 = inconv(in2, ngf)
        self.in2_down1 = down2x(widths[0], widths[1])
        self.in2_down2 = down2x(widths[1], widths[2])
        self.in2_down3 = down2x(widths[2], widths[3])
        self.in2_down4 = down2x(widths[3], widths[4])
        self.out_up1 = up2x(widths[4], widths[3])
        self.out_up2 = up2x(widths[3], widths[2])
        self.out_up3 = up2x(widths[2], widths[1])
        self.out_up4 = up2x(widths[1], widths[0])
        self.out_conv1 = outconv(ngf, out)

    def forward(self, image: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        e1 = self.in1_down4(self.in1_down3(self.in1_down2(self.in1_down1(self.in1_conv1(image)))))
        e2_d1 = self.in2_down1(self.in2_conv1(maps))
        e2_d2 = self.in2_down2(e2_d1)
        e2_d3 = self.in2_down3(e2_d2)
        e2_d4 = self.in2_down4(e2_d3)
        y = e1 * torch.sigmoid(e2_d4)
        y = self.out_up1(y) * torch.sigmoid(e2_d3)
        y = self.out_up2(y) * torch.sigmoid(e2_d2)
        y = self.out_up3(y) * torch.sigmoid(e2_d1)
        y = self.out_up4(y)
        return self.out_conv1(y)


class NetD(nn.Module):
    """PatchGAN discriminator on concat(condition, target or fake): (N, 6, H, W)."""

    def __init__(self, in_channels: int = 6, ndf: int = 64, n_blocks: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1, bias=True),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = ndf
        for i in range(n_blocks):
            nxt = min(2 ** (i + 1), 8) * ndf
            stride = min(n_blocks - i, 2)
            layers += [
                nn.Conv2d(width, nxt, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(nxt),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = nxt
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1, bias=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def init_weights(module: nn.Module) -> None:
    """The published initialisation: conv N(0, 0.02), BN weight N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_generator(ngf: int = 64, init: bool = True) -> NetG:
    net = NetG(ngf=ngf)
    if init:
        net.apply(init_weights)
    return net


def build_discriminator(ndf: int = 64, init: bool = True) -> NetD:
    net = NetD(ndf=ndf)
    if init:
        net.apply(init_weights)
    return net
