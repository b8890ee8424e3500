import json

import pytest
import torch

from pipeline.core.weights import load_into
from pipeline.generator.networks import NetD, NetG, build_generator
from pipeline.generator.parity import check_reference


def test_parity_with_published_outputs(reference):
    io = torch.load(reference / "net_ngf8_io.pt", map_location="cpu", weights_only=True)
    netg = load_into(NetG(ngf=8), reference / "netG_ngf8.pth").eval()
    netd = load_into(NetD(ndf=8), reference / "netD_ndf8.pth").eval()
    with torch.no_grad():
        torch.testing.assert_close(netg(io["imgA"], io["mapAB"]), io["netG_out"], atol=1e-5, rtol=0)
        torch.testing.assert_close(netd(io["netD_in"]), io["netD_out"], atol=1e-5, rtol=0)
    assert check_reference(reference).ok


def test_full_size_keys_and_shapes(reference):
    expected = json.loads((reference / "state_dict_keys_full.json").read_text())
    for name, net in (("netG", NetG()), ("netD", NetD())):
        ours = [[k, list(v.shape)] for k, v in net.state_dict().items()]
        assert ours == expected[name]
    assert len(expected["netG"]) == 277 and len(expected["netD"]) == 22
    n_params = sum(p.numel() for p in NetG().parameters())
    assert 80e6 < n_params < 100e6


@pytest.mark.parametrize("hw", [(256, 176), (64, 48)])
def test_fully_convolutional_output_range(hw):
    net = build_generator(ngf=4).eval()
    img = torch.rand(2, 3, *hw) * 2 - 1
    maps = (torch.rand(2, 36, *hw) > 0.99).float()
    with torch.no_grad():
        out = net(img, maps)
    assert out.shape == (2, 3, *hw) and out.abs().max() <= 1
