"""NumPy binding: NumPy arrays in, NumPy arrays out; gradients through ``vjp(fn, *args) -> (out, pullback)``.

NumPy has no automatic differentiation, so eigpool records its own operations while ``vjp`` runs ``fn`` and replays
their VJP rules backwards. Every public function of ``eigpool`` is available here under the same name.
"""

from eigpool import (
                     covariance,
                     eigh,
                     expm_neg,
                     invsqrtm,
                     logm,
                     ns_invsqrtm,
                     ns_sqrtm,
                     pooled,
                     powm,
                     seb,
                     spectral,
                     sqrtm,
                     triu_unvec,
                     triu_vec,
                     truncate,
                     vjp,
)

__all__ = ["covariance", "eigh", "expm_neg", "invsqrtm", "logm", "ns_invsqrtm", "ns_sqrtm", "pooled", "powm", "seb",
           "spectral", "sqrtm", "triu_unvec", "triu_vec", "truncate", "vjp"]
