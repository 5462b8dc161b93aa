"""NumPy binding: NumPy arrays in, NumPy arrays out; gradients through ``vjp(fn, *args) -> (out, pullback)``.

NumPy has no automatic differentiation, so eigpool records its own operations while ``vjp`` runs ``fn`` and replays
their VJP rules backwards. Every public function of ``eigpool`` is available here under the same name.
"""

import eigpool
from eigpool import vjp

globals().update({name: getattr(eigpool, name) for name in eigpool.ARRAY_FUNCTIONS})

__all__ = [*eigpool.ARRAY_FUNCTIONS, "vjp"]
