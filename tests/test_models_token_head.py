"""TokenGCPHead: global covariance pooling over (B, N, C) tokens computes GCPHead's function of the same tokens laid
out as a feature map, for every method and both routes, keeps or drops the class token, and compiles."""

import copy

import pytest

torch = pytest.importorskip("torch")

from eigpool.backends.torch import GCPHead, TokenGCPHead  # noqa: E402

METHODS = {
    "exact": {},
    "newton_schulz": {"method": "newton_schulz", "iterations": 4},
    "seb": {"seb": True},
    "truncation": {"truncate": 2},
    "taylor": {"grad": "taylor"},
    "gram route": {"reduction": 12},  # 9 patch tokens < d = 12: the Gram matrix route
    "no reduction": {"reduction": None},
}


def _pair(options, **token_options):
    torch.manual_seed(0)
    options = {"reduction": 6} | options
    token_head = TokenGCPHead(8, **options, **token_options).double()
    map_head = GCPHead(8, **options).double()
    map_head.load_state_dict(token_head.state_dict())  # the same parameters, by name and shape
    return token_head, map_head


def _as_map(tokens):
    """(B, N, C) tokens -> (B, C, N, 1): positions in token order."""
    return tokens.transpose(1, 2).unsqueeze(-1)


@pytest.mark.parametrize("options", METHODS.values(), ids=METHODS.keys())
def test_token_head_is_the_gcp_head_of_the_patch_tokens(options):
    token_head, map_head = _pair(options)
    tokens = torch.randn(3, 10, 8, dtype=torch.float64, requires_grad=True)  # 1 class token + 9 patch tokens
    out = token_head(tokens)
    expected = map_head(_as_map(tokens[:, 1:]))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert out.shape == (3, token_head.out_features)
    (grad,) = torch.autograd.grad(out.square().sum(), tokens)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), tokens)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)
    assert not grad[:, 0].any()  # the dropped class token gets no gradient


def test_gram_route_equals_the_dense_route_over_tokens():
    torch.manual_seed(1)
    gram = TokenGCPHead(8, reduction=12, path="gram").double()
    dense = TokenGCPHead(8, reduction=12, path="dense").double()
    dense.load_state_dict(gram.state_dict())
    tokens = torch.randn(2, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(gram(tokens), dense(tokens), rtol=1e-9, atol=1e-11)


def test_class_token_kept_pools_every_token_and_prefix_tokens_count():
    token_head, map_head = _pair({}, class_token="keep")
    tokens = torch.randn(2, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(token_head(tokens), map_head(_as_map(tokens)))
    distilled, map_head = _pair({}, prefix_tokens=2)  # DeiT: class and distillation tokens
    torch.testing.assert_close(distilled(tokens), map_head(_as_map(tokens[:, 2:])))
    assert "class_token='keep'" in repr(token_head) and "prefix_tokens=2" in repr(distilled)


def test_token_head_compiles_fullgraph_like_eager():
    torch.manual_seed(2)
    head = TokenGCPHead(8, reduction=4).eval()
    compiled = torch.compile(copy.deepcopy(head), fullgraph=True, backend="aot_eager")
    tokens = torch.randn(2, 9, 8)
    x1, x2 = tokens.clone().requires_grad_(), tokens.clone().requires_grad_()
    eager = head(x1)
    eager.square().sum().backward()
    out = compiled(x2)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(x2.grad, x1.grad)


BAD = {
    "map input": (torch.zeros(2, 8, 3, 3), "input must be \\(B, N, 8\\) tokens"),
    "wrong channels": (torch.zeros(2, 5, 7), "input must be \\(B, N, 8\\) tokens"),
    "only the class token": (torch.zeros(2, 1, 8), "with N > 1"),
}


@pytest.mark.parametrize(("x", "message"), BAD.values(), ids=BAD.keys())
def test_bad_token_input_is_named(x, message):
    with pytest.raises(ValueError, match=f"TokenGCPHead: .*{message}"):
        TokenGCPHead(8, reduction=4)(x)


def test_bad_token_options_are_named():
    with pytest.raises(ValueError, match="TokenGCPHead: class_token must be one of"):
        TokenGCPHead(8, class_token="first")
    with pytest.raises(ValueError, match="TokenGCPHead: prefix_tokens must be an integer >= 0"):
        TokenGCPHead(8, prefix_tokens=-1)
    with pytest.raises(ValueError, match="GCPHead: truncate must be smaller"):
        TokenGCPHead(8, reduction=4, truncate=4)
