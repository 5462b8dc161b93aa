"""The accuracy report: every gradient method's forward and gradient error, and the ICCV 2021 tables, from the library.

``run(out_dir)`` writes ``accuracy.md`` (Markdown), ``accuracy.json`` (every figure) and ``figures/*.png`` into
``out_dir``. Sections:

1. The reference. The exact Loewner gradient of sqrtm in float64 (eigpool.sqrtm, grad="exact") is the reference of
   every other figure, so it is itself measured: against an mpmath eigendecomposition (``mp.eigsy``, 40 digits) with
   the same eigenvalue floor, for the distinct, clustered, repeated and ill-conditioned families, sqrtm and SEB.
2. Methods x spectrum families. For each method (exact, taylor K, pade, clip, power_iteration, Newton-Schulz T, SEB)
   in float64 and computed in float32, the relative Frobenius errors ||F - F_ref|| / ||F_ref|| of the forward value and
   ||dS - dS_ref|| / ||dS_ref|| of the gradient of <G, F(S)> for a random symmetric G, over designed spectra.
3. The kernel-approximation table of the ICCV 2021 paper: the Taylor kernel (eigpool.eigh's "taylor", degree 100) and
   the original Pade [50/50] (mpmath.pade at 20 digits) against 1/(1 - x), with eigpool's own rational "pade" kernel.
4. The gradient upper-bound table: the largest kernel value each method produces on spectra in [eps, 1], and the
   largest gradient entry that reaches S through sqrtm.
5. Finite-difference checks of eigpool's own VJPs (NumPy, and PyTorch when its backend imports).

Modules: ``cases`` (families, run sizes, methods), ``measure`` (sections 1, 2 and 5), ``iccv`` (sections 3 and 4),
``figures``, ``text`` (fills the Markdown template ``accuracy_template.md``) and ``runner`` (``run``).
"""

from .cases import METHODS, Config
from .runner import run

__all__ = ["Config", "METHODS", "run"]
