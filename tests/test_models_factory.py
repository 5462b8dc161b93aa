"""The model factory: one mapping from settings to the GCP head and the network, used by the training loop (and its
hybrid switch), eigpool-evaluate and eigpool-attribute, which therefore build identical heads from one Config."""

import pytest

torch = pytest.importorskip("torch")

from eigpool.backends.torch import GCPHead  # noqa: E402
from eigpool.models import attribute, evaluate, factory  # noqa: E402
from eigpool.models import train as train_module  # noqa: E402
from eigpool.models.config import Config  # noqa: E402

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

SETTINGS = {
    "eigen": {},
    "taylor + truncate": {"grad": "taylor", "truncate": 2},
    "seb": {"seb": True},
    "newton_schulz": {"method": "newton_schulz", "iterations": 3},
    "float32": {"compute_dtype": "float32", "reduction": None},
    "hybrid": {"hybrid": True, "grad": "pade", "truncate": 1},
}


def _head_signature(head):
    return repr(head), head.normalise.spec


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_build_network_has_the_head_of_head_options(settings):
    config = Config(**({"reduction": 6} | settings)).validate()
    method = factory.method_for_epoch(config, 0)
    head = factory.build_network(config, 3).head
    expected = GCPHead(in_channels=64, **factory.head_options(config, method, 64))
    assert _head_signature(head) == _head_signature(expected)


def test_head_options_of_the_hybrid_stages():
    config = Config(hybrid=True, grad="pade", truncate=3, seb=True, iterations=4, lr_steps=[2, 5]).validate()
    assert [factory.method_for_epoch(config, e) for e in (0, 4, 5, 6)] == ["newton_schulz"] * 2 + ["eigen"] * 2
    stage_one, stage_two = factory.head_options(config, "newton_schulz"), factory.head_options(config, "eigen")
    assert (stage_one["grad"], stage_one["truncate"], stage_one["seb"], stage_one["iterations"]) == ("exact", 0,
                                                                                                     False, 4)
    assert (stage_two["grad"], stage_two["truncate"], stage_two["seb"]) == ("pade", 3, True)
    assert factory.method_for_epoch(Config(head="avg").validate(), 0) == "avg"
    assert factory.build_network(Config(head="avg").validate(), 3).head.out_features == 64


def test_the_four_call_sites_build_identical_heads(tmp_path, monkeypatch, capsys):
    """train (its final head, after the hybrid switch), the switch itself, eigpool-evaluate and eigpool-attribute."""
    config = Config(synthetic_classes=2, synthetic_train=4, synthetic_val=2, synthetic_test=2, batch_size=4, epochs=2,
                    lr_steps=[1], reduction=4, grad="taylor", truncate=1, hybrid=True, out_dir=str(tmp_path),
                    name="hybrid", progress=False, threads=1).validate()
    heads = {}

    def spying_switch(model, config, method):
        factory.switch_method(model, config, method)
        heads["train"] = model.head

    monkeypatch.setattr(train_module, "switch_method", spying_switch)
    run_dir = train_module.train(config).run_dir
    capsys.readouterr()

    def spying_load(path):
        loaded = factory.load_network(path)
        heads["evaluate"] = loaded[0].head
        return loaded

    monkeypatch.setattr(evaluate, "load_network", spying_load)
    assert evaluate.main([run_dir, "--split", "val"]) == 0
    heads["attribute"] = attribute.load_model(run_dir)[0].head
    reference = factory.build_network(config, 2, method="newton_schulz")
    factory.switch_method(reference, config, "eigen")
    heads["switch"] = reference.head
    signatures = {site: _head_signature(head) for site, head in heads.items()}
    assert set(signatures) == {"train", "evaluate", "attribute", "switch"}
    assert len(set(signatures.values())) == 1, signatures
    assert heads["train"].normalise.spec.truncate == 1 and heads["train"].normalise.spec.grad == "taylor"
