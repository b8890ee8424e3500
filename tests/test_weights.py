import datetime
import os

import numpy as np
import pytest
import torch

from pipeline.core.weights import (
    WeightsError,
    checkpoint_id,
    expand_checkpoints,
    load_into,
    load_state_dict,
)
from pipeline.generator.networks import NetG


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/pose_pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "netG_1.pth"
    torch.save({"w": torch.zeros(1), "payload": Evil()}, path)
    with pytest.raises(WeightsError, match="not a plain state dict"):
        load_state_dict(path)
    assert not os.path.exists("/tmp/pose_pwned")
    torch.save(NetG(ngf=2), tmp_path / "module.pth")  # a whole pickled module
    with pytest.raises(WeightsError, match="not a plain state dict"):
        load_state_dict(tmp_path / "module.pth")


def test_wrong_shapes_name_the_file(tmp_path):
    path = tmp_path / "netG_500.pth"
    torch.save(NetG(ngf=4).state_dict(), path)
    with pytest.raises(WeightsError, match=r"netG_500\.pth does not fit NetG.*wrong ngf"):
        load_into(NetG(ngf=8), path)
    load_into(NetG(ngf=4), path)


def test_checkpoint_resolution(tmp_path):
    for it in (1000, 500):
        torch.save(NetG(ngf=2).state_dict(), tmp_path / f"netG_{it}.pth")
    found = expand_checkpoints([str(tmp_path)])
    assert [checkpoint_id(p) for p in found] == ["500", "1000"]
    assert expand_checkpoints(["500"], tmp_path) == [tmp_path / "netG_500.pth"]
    with pytest.raises(WeightsError, match="netG_7.pth"):
        expand_checkpoints(["7"], tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict(tmp_path / "nope.pth")


def random_bytes_file(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def disallowed_object_file(path):
    torch.save({"w": torch.zeros(1), "when": datetime.date(2020, 1, 1)}, path)


@pytest.mark.parametrize("make", [random_bytes_file, disallowed_object_file])
def test_a_refused_file_is_named_without_advice_to_load_it_unsafely(tmp_path, make):
    from pipeline.pose.openpifpaf_estimator import load_network

    path = tmp_path / "netG_3.pth"
    make(path)
    for load, what in ((load_state_dict, "a plain state dict"), (load_network, "a loadable")):
        with pytest.raises(WeightsError) as info:
            load(path)
        text = str(info.value)
        assert text.startswith(f"{path} is not {what}"), text
        # torch's own message suggests loading unsafely or allow-listing the class.
        for advice in ("weights_only=False", "likely succeed", "can still be loaded", "trust"):
            assert advice not in text, text
        assert info.value.__cause__ is None and info.value.__suppress_context__
