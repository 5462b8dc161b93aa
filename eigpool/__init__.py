"""eigpool: eigenvalue-based global covariance pooling with exact, stable matrix-function gradients.

One core written against the Python array API: every function takes NumPy, CuPy, PyTorch or any array-API arrays and
returns the same type, dtype and device. Gradients: ``eigpool.vjp`` for arrays without autodiff, PyTorch's autograd
and ``torch.func`` for tensors (``eigpool.backends.torch``). Options are resolved once into frozen specifications
(``spectral_spec``; applied with ``matrix_function``); value checks follow ``value_checks``.
"""

from . import _primitive
from ._checks import value_checks
from ._divided import SpectralFunction, ns_polynomial, shifted_sqrt
from ._kernels import KERNELS
from ._primitive import Primitive, bind, vjp
from ._spec import GRADS, SpectralSpec
from .covariance import covariance
from .eigh import EighResult, eigh
from .gram import pooled
from .newton_schulz import ns_invsqrtm, ns_sqrtm
from .spectral import (
    expm,
    expm_neg,
    frechet,
    invsqrtm,
    logm,
    matrix_function,
    powm,
    seb,
    spectral,
    spectral_spec,
    sqrtm,
    truncate,
)
from .triu import triu_unvec, triu_vec

__version__ = "0.1.0"

__all__ = [
    "ARRAY_FUNCTIONS", "GRADS", "KERNELS", "EighResult", "Primitive", "SpectralFunction", "SpectralSpec", "bind",
    "covariance", "eigh", "expm", "expm_neg", "frechet", "invsqrtm", "logm", "matrix_function", "ns_invsqrtm",
    "ns_polynomial", "ns_sqrtm", "pooled", "powm", "seb", "shifted_sqrt", "spectral", "spectral_spec", "sqrtm",
    "triu_unvec", "triu_vec", "truncate", "value_checks", "vjp",
]

#: The functions on arrays, which every backend offers under the same names (the backends read this table).
ARRAY_FUNCTIONS = ("covariance", "eigh", "expm", "expm_neg", "frechet", "invsqrtm", "logm", "matrix_function",
                   "ns_invsqrtm", "ns_sqrtm", "pooled", "powm", "seb", "spectral", "sqrtm", "triu_unvec", "triu_vec",
                   "truncate")

_primitive.load_backends_of_imported_frameworks()
