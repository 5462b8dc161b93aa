"""Mixed precision, compilation and memory layout on the CPU: ``--amp bf16|fp16`` autocasts the backbone only (the GCP
head computes in its compute dtype), fp16 trains with a gradient scaler that skips overflowing steps, ``--compile``
and ``--channels-last`` train and evaluate like the eager network, and bad values are refused before any work."""

import copy
import math
import re

import pytest

torch = pytest.importorskip("torch")

from eigpool.models import factory  # noqa: E402
from eigpool.models.checkpoint import load_checkpoint  # noqa: E402
from eigpool.models.config import Config  # noqa: E402
from eigpool.models.engine import Distributed, _step, build_scaler  # noqa: E402
from eigpool.models.evaluate import main as evaluate_main  # noqa: E402
from eigpool.models.heads import FGVCNet  # noqa: E402
from eigpool.models.train import main, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

TINY = dict(synthetic_classes=3, synthetic_train=6, synthetic_val=2, synthetic_test=2, batch_size=6, epochs=1,
            lr_steps=[1], reduction=4, progress=False, threads=1)


def _network(**settings):
    torch.manual_seed(0)
    return factory.build_network(Config(**(TINY | settings)).validate(), 3)


def _dtypes(model):
    """The dtype of the backbone's output and of the head's input and output in one forward pass."""
    seen = {}
    model.backbone.register_forward_hook(lambda m, args, out: seen.__setitem__("features", out.dtype))
    model.head.register_forward_hook(lambda m, args, out: seen.update(head_in=args[0].dtype, head_out=out.dtype))
    return seen


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_autocasts_the_backbone_and_not_the_head(amp):
    model = _network(amp=amp).eval()
    seen = _dtypes(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        # Even under the caller's own autocast the head runs outside it, from float32 features.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            again = model(x)
    assert seen == {"features": {"bf16": torch.bfloat16, "fp16": torch.float16}[amp], "head_in": torch.float32,
                    "head_out": torch.float32}
    assert logits.dtype == again.dtype == torch.float32
    torch.testing.assert_close(again, logits)
    # The head computes the float64 function of the low-precision features (its compute dtype): a head run under
    # autocast would be off by bf16/fp16 round-off (~1e-3), far above float32's.
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    with torch.no_grad():
        with torch.autocast("cpu", dtype=low):
            features = model.forward_features(x)
        vector = copy.deepcopy(model.head).double()(features.double())
        torch.testing.assert_close(model.classifier.double()(vector).float(), logits, rtol=1e-5, atol=1e-5)
    assert model.head.compute_dtype == "float64"


def test_no_amp_is_the_float32_network():
    model = _network()
    seen = _dtypes(model)
    model(torch.randn(2, 3, 32, 32))
    assert seen == {"features": torch.float32, "head_in": torch.float32, "head_out": torch.float32}
    assert model.amp is None and not model.channels_last
    with pytest.raises(ValueError, match="FGVCNet: amp must be None or one of"):
        FGVCNet(model.backbone, model.head, 3, amp="fp8")


def test_channels_last_network_equals_the_contiguous_one():
    reference, model = _network(), _network(channels_last=True)
    conv = model.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    seen = {}
    model.backbone.register_forward_pre_hook(lambda m, args: seen.__setitem__("input", args[0]))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-5)
    assert seen["input"].is_contiguous(memory_format=torch.channels_last)


def test_fp16_scaler_skips_a_step_whose_gradients_overflow():
    """The float32 loss (~1e35) is finite; times the scale (65536) it overflows, so do the gradients: the scaler
    skips the step and halves the scale, where without a scaler this step would be a divergence."""
    torch.manual_seed(0)
    config = Config(**(TINY | {"amp": "fp16"})).validate()
    net = torch.nn.Linear(4, 3)
    before = copy.deepcopy(net.state_dict())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = build_scaler(config, torch.device("cpu"))
    scale = scaler.get_scale()
    groups = {"backbone": list(net.parameters()), "head": [], "classifier": []}
    _, loss, _, _ = _step(net, torch.full((2, 4), 1e35), torch.tensor([0, 1]), optimizer, groups, config,
                          Distributed(), scaler)
    assert math.isfinite(loss.item()) and scaler.get_scale() == scale / 2
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert not build_scaler(Config(**(TINY | {"amp": "bf16"})).validate(), torch.device("cpu")).is_enabled()


def test_fp16_run_saves_and_resumes_its_scaler(tmp_path):
    config = Config(**(TINY | {"amp": "fp16", "epochs": 2, "out_dir": str(tmp_path), "name": "fp16"})).validate()
    result = train(config, stop_after=1)
    ckpt = load_checkpoint(result.run_dir)
    assert ckpt["scaler"]["scale"] > 0 and ckpt["config"]["amp"] == "fp16"
    resumed = train(config, resume=result.run_dir)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert load_checkpoint(result.run_dir)["scaler"]["scale"] > 0


def test_two_epochs_with_bf16_and_compile_on_the_embedded_data_set(tmp_path, capsys):
    run = ["--epochs", "2", "--lr-steps", "1", "--synthetic-classes", "3", "--synthetic-train", "6",
           "--synthetic-val", "2", "--synthetic-test", "2", "--batch-size", "6", "--reduction", "4",
           "--progress", "false", "--amp", "bf16", "--compile", "--channels-last",
           "--out-dir", str(tmp_path), "--name", "compiled"]
    assert main(run) == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out
    ckpt = load_checkpoint(tmp_path / "compiled")
    assert ckpt["epoch"] == 2 and (ckpt["config"]["amp"], ckpt["config"]["compile"]) == ("bf16", True)
    assert not [k for k in ckpt["model"] if "_orig_mod" in k]  # the model's own keys, not the compiled wrapper's
    assert all(math.isfinite(row["train_loss"]) for row in ckpt["history"])
    assert evaluate_main([str(tmp_path / "compiled"), "--split", "test"]) == 0


BAD = {
    "amp": (["--amp", "fp32"], "amp must be one of \\(None, 'bf16', 'fp16'\\)"),
    "compile": (["--compile", "maybe"], "compile must be true or false"),
    "channels_last": (["--channels-last", "1"], "channels_last must be true or false"),
}


@pytest.mark.parametrize(("flags", "message"), BAD.values(), ids=BAD.keys())
def test_bad_precision_settings_exit_with_status_two(tmp_path, capsys, flags, message):
    assert main([*flags, "--out-dir", str(tmp_path)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_switch_given_alone_is_on():
    from eigpool.models.config import flag_settings
    from eigpool.models.train import build_parser

    args = build_parser().parse_args(["--compile", "--channels-last", "--flip", "false", "--epochs", "3"])
    assert flag_settings(args) == {"compile": True, "channels_last": True, "flip": False, "epochs": 3}
