"""eigpool: eigenvalue-based global covariance pooling with exact, stable matrix-function gradients.

One core written against the Python array API: every function takes NumPy, CuPy, PyTorch or any array-API arrays and
returns the same type, dtype and device. Gradients: ``eigpool.vjp`` for arrays without autodiff, PyTorch's autograd
for tensors (``eigpool.backends.torch``).
"""

from ._primitive import Primitive, bind, vjp
from .covariance import covariance
from .eigh import KERNELS, EighResult, eigh
from .gram import pooled
from .newton_schulz import ns_invsqrtm, ns_sqrtm
from .spectral import GRADS, expm_neg, invsqrtm, logm, powm, seb, spectral, sqrtm, truncate
from .triu import triu_unvec, triu_vec

__version__ = "0.1.0"

__all__ = [
    "GRADS", "KERNELS", "EighResult", "Primitive", "bind", "covariance", "eigh", "expm_neg", "invsqrtm", "logm",
    "ns_invsqrtm", "ns_sqrtm", "pooled", "powm", "seb", "spectral", "sqrtm", "triu_unvec", "triu_vec", "truncate",
    "vjp",
]
