"""timm backbones (``--backbone timm:NAME``): each family end to end on the CPU with a tiny configuration whose random
weights are saved to a local file and loaded through ``--pretrained``; the layout each family gives; names that would
need the hub, bad options and mismatched files refused with exit status 2; nothing reaches the network."""

import os
import re
import socket

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
yaml = pytest.importorskip("yaml")

from safetensors.torch import save_file  # noqa: E402

from eigpool.backends.torch import GCPHead, TokenGCPHead  # noqa: E402
from eigpool.models import factory  # noqa: E402
from eigpool.models.config import Config  # noqa: E402
from eigpool.models.errors import SettingsError  # noqa: E402
from eigpool.models.evaluate import main as evaluate_main  # noqa: E402
from eigpool.models.heads import TokenAvgPoolHead, build_token_head  # noqa: E402
from eigpool.models.timm_backbones import TimmBackbone, build_timm_backbone, load_timm_weights  # noqa: E402
from eigpool.models.train import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

# family: (timm name, tiny options, layout of forward_features, checkpoint format written for --pretrained).
FAMILIES = {
    "resnet": ("resnet18", {"layers": [1, 1, 1, 1], "output_stride": 8}, "NCHW", "pth"),
    "convnext": ("convnext_tiny", {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32], "output_stride": 8}, "NCHW",
                 "wrapped"),
    "efficientnet": ("test_efficientnet", {"output_stride": 8}, "NCHW", "safetensors"),
    "vit": ("vit_small_patch16_224", {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}, "NLC",
            "safetensors"),
    "swin": ("swin_tiny_patch4_window7_224", {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2],
                                              "window_size": 4}, "NHWC", "ema"),
}
TINY_RUN = ["--synthetic-classes", "3", "--synthetic-train", "6", "--synthetic-val", "2", "--synthetic-test", "2",
            "--batch-size", "6", "--epochs", "1", "--lr-steps", "1", "--reduction", "4", "--progress", "false"]


def _flow(options):
    return yaml.safe_dump(options, default_flow_style=True).strip()


def _save(model, path, fmt):
    """The random weights of a timm model (with its classifier) in one of timm's checkpoint formats."""
    state = model.state_dict()
    if fmt == "safetensors":
        save_file(state, path)
    elif fmt == "wrapped":  # a DistributedDataParallel training checkpoint
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    elif fmt == "ema":  # timm's train.py: the EMA weights are preferred
        torch.save({"state_dict": {k: torch.zeros_like(v) for k, v in state.items()}, "state_dict_ema": state}, path)
    else:
        torch.save(state, path)


def _checkpoint(tmp_path, family, img_size=32):
    name, options, _, fmt = FAMILIES[family]
    extra = {"img_size": img_size} if timm.models.get_pretrained_cfg_value(name, "fixed_input_size") else {}
    torch.manual_seed(0)
    source = timm.create_model(name, pretrained=False, num_classes=7, **options, **extra)
    path = tmp_path / f"{family}.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    _save(source, path, fmt)
    return source, path


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_from_a_local_checkpoint_end_to_end(tmp_path, family, capsys):
    name, options, layout, _ = FAMILIES[family]
    source, path = _checkpoint(tmp_path, family)
    config = Config(backbone=f"timm:{name}", backbone_options=options, pretrained=str(path), reduction=4).validate()
    network = factory.build_network(config, 3)
    backbone = network.backbone
    assert isinstance(backbone, TimmBackbone) and backbone.layout == layout
    assert isinstance(network.head, TokenGCPHead if layout == "NLC" else GCPHead)
    assert backbone.out_channels == source.num_features
    loaded, saved = backbone.model.state_dict(), source.state_dict()
    assert loaded and all(torch.equal(v, saved[k]) for k, v in loaded.items())
    features = network.forward_features(torch.zeros(2, 3, 32, 32))
    assert features.shape[-1 if layout == "NLC" else 1] == backbone.out_channels

    run = ["--backbone", f"timm:{name}", "--backbone-options", _flow(options), "--pretrained", str(path), *TINY_RUN,
           "--out-dir", str(tmp_path), "--name", family]
    assert main(run) == 0
    assert "final test accuracy" in capsys.readouterr().out
    assert evaluate_main([str(tmp_path / family), "--split", "test"]) == 0
    reloaded, saved_config, _ = factory.load_network(tmp_path / family)
    assert saved_config.backbone_options == options and reloaded.backbone.layout == layout


def test_vit_checkpoint_of_another_input_size_has_its_position_embeddings_resampled(tmp_path):
    """timm's own conversion of the model's checkpoints runs on local files too (a 64 px ViT fine-tuned at 32 px)."""
    source, path = _checkpoint(tmp_path, "vit", img_size=64)
    name, options, _, _ = FAMILIES["vit"]
    backbone = build_timm_backbone(name, options, (32, 32), pretrained=path)
    assert source.pos_embed.shape[1] == 1 + 16 * 16 and backbone.model.pos_embed.shape[1] == 1 + 8 * 8
    assert torch.equal(backbone.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_vit_class_token_dropped_or_kept_and_the_token_avg_head(tmp_path):
    name, options, _, _ = FAMILIES["vit"]
    keep = factory.build_network(Config(backbone=f"timm:{name}", backbone_options=options, reduction=4,
                                        class_token="keep").validate(), 3)
    assert keep.head.class_token == "keep" and keep.head.prefix_tokens == 1 and keep.backbone.positions == 64
    avg = factory.build_network(Config(backbone=f"timm:{name}", backbone_options=options, head="avg").validate(), 3)
    assert isinstance(avg.head, TokenAvgPoolHead) and avg(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    tokens = torch.arange(24.0).reshape(1, 3, 8)
    torch.testing.assert_close(TokenAvgPoolHead(8)(tokens), tokens[:, 1:].mean(1))
    torch.testing.assert_close(TokenAvgPoolHead(8, "keep")(tokens), tokens.mean(1))
    assert isinstance(build_token_head("gcp", 8, "drop", 1, reduction=4), TokenGCPHead)
    with pytest.raises(ValueError, match="the avg head takes no options"):
        build_token_head("avg", 8, reduction=4)


def test_hybrid_switch_on_a_token_backbone_keeps_the_token_head():
    name, options, _, _ = FAMILIES["vit"]
    config = Config(backbone=f"timm:{name}", backbone_options=options, reduction=4, hybrid=True,
                    class_token="keep").validate()
    model = factory.build_network(config, 3)
    weight = model.head.reduce[0].weight
    factory.switch_method(model, config, "eigen")
    assert isinstance(model.head, TokenGCPHead) and model.head.class_token == "keep"
    assert model.head.reduce[0].weight is weight and model.head.normalise.method == "eigen"


def test_nothing_reaches_the_network(tmp_path, monkeypatch):
    _, path = _checkpoint(tmp_path, "efficientnet")

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    name, options, _, _ = FAMILIES["efficientnet"]
    config = Config(backbone=f"timm:{name}", backbone_options=options, pretrained=str(path)).validate()
    assert isinstance(factory.build_network(config, 3).backbone, TimmBackbone)


REFUSED = {
    "hub prefix": (["--backbone", "timm:hf-hub:timm/resnet18.a1_in1k"], "would be fetched from the Hugging Face hub"),
    "hub repo id": (["--backbone", "timm:timm/resnet18.a1_in1k"], "would be fetched from the Hugging Face hub"),
    "local folder": (["--backbone", "timm:local-dir:/models/r18"], "would be fetched from the Hugging Face hub"),
    "unknown name": (["--backbone", "timm:resnet19"], "timm has no model 'resnet19'; closest: resnet18"),
    "reserved option": (["--backbone", "timm:resnet18", "--backbone-options", "{pretrained: true}"],
                        "backbone_options may not set \\['pretrained'\\]"),
    "options of a built-in backbone": (["--backbone-options", "{depth: 2}"], "backbone 'tiny' is not a timm model"),
    "options not a mapping": (["--backbone", "timm:resnet18", "--backbone-options", "[2]"],
                              "backbone_options must be a mapping"),
    "unknown option": (["--backbone", "timm:test_resnet", "--backbone-options", "{colour: red}"],
                       "timm.create_model\\('test_resnet'.*failed: TypeError"),
    "one position": (["--backbone", "timm:test_resnet"], "gives 1 position\\(s\\) at the input size \\(32, 32\\)"),
    "class token of a map": (["--backbone", "timm:test_resnet", "--backbone-options", "{output_stride: 8}",
                              "--class-token", "keep"], "class_token 'keep' applies to token backbones"),
    "missing weights": (["--backbone", "timm:test_resnet", "--pretrained", "/nonexistent/w.safetensors"],
                        "does not exist"),
}


@pytest.mark.parametrize(("flags", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_at_once_with_exit_status_two(tmp_path, capsys, flags, message):
    assert main([*flags, *TINY_RUN, "--out-dir", str(tmp_path)]) == 2
    assert not os.listdir(tmp_path)  # refused before a run folder was made
    err = capsys.readouterr().err
    assert err.startswith("eigpool-train: error: config:")
    assert re.search(message, err), err


def test_mismatched_unreadable_and_numpy_weights_files_are_named(tmp_path):
    backbone = build_timm_backbone("test_resnet", {"output_stride": 8}, (32, 32))
    other = tmp_path / "convnext.pth"
    torch.save(timm.create_model("test_convnext").state_dict(), other)
    with pytest.raises(SettingsError, match="is not a checkpoint of timm test_resnet as configured"):
        load_timm_weights(backbone, other)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(os.urandom(64))
    with pytest.raises(SettingsError, match="cannot read weights file"):
        load_timm_weights(backbone, noise)
    with pytest.raises(SettingsError, match="NumPy checkpoint"):
        (tmp_path / "w.npz").write_bytes(b"")
        load_timm_weights(backbone, tmp_path / "w.npz")


def test_attribution_refuses_a_token_head():
    from eigpool.models import attribution

    name, options, _, _ = FAMILIES["vit"]
    network = factory.build_network(Config(backbone=f"timm:{name}", backbone_options=options, reduction=4).validate(),
                                    3)
    with pytest.raises(TypeError, match="the head pools tokens"):
        attribution.from_model(network)
    swin, options, _, _ = FAMILIES["swin"]
    network = factory.build_network(Config(backbone=f"timm:{swin}", backbone_options=options, reduction=4).validate(),
                                    3)
    assert attribution.from_model(network).reduce is network.head.reduce  # NHWC is passed on as a feature map
