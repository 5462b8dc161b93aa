"""PyTorch binding: every eigpool function on tensors, differentiable in every mode of PyTorch, and ``torch.nn`` layers.

Importing this module registers the autograd adapter (``_autograd``) as the binder of torch tensors; ``eigpool.sqrtm``
on a tensor imports it on first use. The functions are eigpool's own (``eigpool.ARRAY_FUNCTIONS``): tensors in,
tensors of the same dtype and device out, with reverse mode (``backward``, ``autograd.grad``, double backward),
forward mode (``torch.autograd.forward_ad``), ``torch.func`` (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap), meta and
fake tensors, ``torch.compile(fullgraph=True)`` and ``torch.export``. Layers: ``CovariancePooling``,
``MatrixFunction``, the complete head ``GCPHead`` for feature maps and ``TokenGCPHead`` for tokens (``nn``).
"""

import eigpool

from ._autograd import bind
from .nn import CovariancePooling, GCPHead, MatrixFunction, TokenGCPHead

globals().update({name: getattr(eigpool, name) for name in eigpool.ARRAY_FUNCTIONS})

__all__ = [*eigpool.ARRAY_FUNCTIONS, "CovariancePooling", "GCPHead", "MatrixFunction", "TokenGCPHead", "bind"]
