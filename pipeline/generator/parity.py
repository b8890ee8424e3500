"""Parity of our networks with the published code's reference outputs (DESIGN 4)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.core.weights import load_into, safe_torch_load
from pipeline.generator.networks import NetD, NetG

TOLERANCE = 1e-5


@dataclass
class ParityReport:
    ok: bool = True
    lines: list[str] = field(default_factory=list)


def check_reference(reference: Path) -> ParityReport:
    report = ParityReport()
    io = safe_torch_load(reference / "net_ngf8_io.pt", what="the reference tensors")
    netg = load_into(NetG(ngf=8), reference / "netG_ngf8.pth").eval()
    netd = load_into(NetD(ndf=8), reference / "netD_ndf8.pth").eval()
    with torch.no_grad():
        g = (netg(io["imgA"], io["mapAB"]) - io["netG_out"]).abs().max().item()
        d = (netd(io["netD_in"]) - io["netD_out"]).abs().max().item()
    for name, diff in (("NetG", g), ("NetD", d)):
        good = diff <= TOLERANCE
        report.ok &= good
        report.lines.append(
            f"{name} ngf/ndf 8: max |ours - published| = {diff:.2e} "
            f"({'ok' if good else 'MISMATCH'}, tolerance {TOLERANCE:g})"
        )
    keys_file = reference / "state_dict_keys_full.json"
    if keys_file.exists():
        expected = json.loads(keys_file.read_text())
        for name, net in (("netG", NetG()), ("netD", NetD())):
            ours = [[k, list(v.shape)] for k, v in net.state_dict().items()]
            good = ours == expected[name]
            report.ok &= good
            report.lines.append(
                f"{name} full size: {len(ours)} keys and shapes "
                f"{'match' if good else 'DIFFER from'} the published list"
            )
    return report
