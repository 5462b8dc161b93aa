"""Backbones: torchvision ResNets with the iSQRT-COV last-stage stride 1, and pretrained weights from a local file."""

import os

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from eigpool.models.backbones import BACKBONE_CHANNELS, BACKBONES, build_backbone, load_pretrained  # noqa: E402
from eigpool.models.errors import SettingsError  # noqa: E402


@pytest.mark.parametrize(("name", "channels"), [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
                                                ("resnet101", 2048)])
def test_last_stage_runs_at_stride_one(name, channels):
    backbone = build_backbone(name).eval()
    # Output stride 16 instead of torchvision's 32: a 64 px input gives a 4 x 4 map (448 px: 28 x 28).
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, channels, 4, 4)
    assert backbone.out_channels == channels == BACKBONE_CHANNELS[name] and backbone.stride == 16
    assert all(m.stride == (1, 1) for m in backbone.layer4.modules() if isinstance(m, torch.nn.Conv2d))


def test_stride_change_keeps_torchvision_weights_layout():
    ours = build_backbone("resnet50").state_dict()
    reference = {k: v for k, v in torchvision.models.resnet50(weights=None).state_dict().items()
                 if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


def test_tiny_backbone_shape():
    backbone = build_backbone("tiny")
    assert backbone(torch.zeros(2, 3, 32, 32)).shape == (2, BACKBONE_CHANNELS["tiny"], 16, 16) and backbone.stride == 2


def test_pretrained_loads_a_torchvision_state_dict(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("resnet18", pretrained=path)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_pretrained_accepts_wrapped_and_ddp_prefixed_state(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    backbone = build_backbone("resnet18", pretrained=path)
    assert torch.equal(backbone.conv1.weight, reference.conv1.weight)


def test_pretrained_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="does not exist.*nothing is downloaded"):
        build_backbone("resnet18", pretrained=tmp_path / "missing.pth")


def test_pretrained_of_another_architecture_is_rejected(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(SettingsError, match="not a torchvision resnet34 state dict"):
        load_pretrained(build_backbone("resnet34"), path)


def test_pretrained_unreadable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(os.urandom(256))
    with pytest.raises(SettingsError, match="cannot read weights file"):
        load_pretrained(build_backbone("tiny"), path)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="name must be one of"):
        build_backbone("vgg16")
    assert "tiny" in BACKBONES
