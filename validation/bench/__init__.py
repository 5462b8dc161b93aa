"""Benchmark of the GCP layer: forward + backward of covariance -> matrix square root -> upper-triangular vector.

    python -m eigpool.validation.bench [--quick] [--threads 1] [--json eigpool_bench.json]
    eigpool-bench ...
    python -m eigpool.validation.bench.gpu --out gpu_check.md     # on a CUDA machine: tests + the GPU table

Every method maps features X (B, d, N) to the vector triu(S^(1/2)) (B, d(d+1)/2), S = Xc Xc^T / N, and is timed for
one forward and one backward pass (cotangent fixed per case), all in the case's dtype (eigpool runs with
``compute_dtype=None`` so that every method computes in that dtype). The methods (``BASELINES``, described in
``layers``) run in the same process, round robin: eigpool_exact, eigpool_ns, (a) torch_eigh, torch_sqrth, (b)
torch_ns, (c) svd_pade and (d) floor.

Cases and baselines are plain tables (``CASES``, ``BASELINES``): add a row or a named builder to extend the bench.
``--rank-aware`` runs ``RANK_CASES`` instead (B = 4, d = 1024 and 2048 channels over N = 196 positions, float32
features computed in float64): GCPHead's automatic path (the Gram route of eigpool.gram, since N < d) against its
dense path and the original SVD-Pade layer, with the peak resident memory of a fresh process running each.
Reported: median time per method and the ratios svd_pade / eigpool_exact, torch_eigh / eigpool_exact,
torch_sqrth / eigpool_exact (> 1: eigpool is faster), eigpool_exact / floor (>= 1; close to 1 is good) and
torch_ns / eigpool_ns. Wall-clock or CPU-time medians after warm-up; threads, versions and the machine are recorded
in the JSON file.

Modules: ``cases`` (the case tables), ``layers`` (the builders), ``timing``, ``memory`` (peak memory in a fresh
process), ``table`` (ratios, printed and Markdown tables), ``cpu`` (the CPU runs), ``cli`` (``eigpool-bench``) and
``gpu`` (the prepared GPU check).
"""

from .cases import CASES, QUICK_CASES, RANK_CASES, Case
from .cli import main
from .cpu import run, run_rank_aware
from .layers import BASELINES, RANK_BASELINES
from .memory import peak_memory
from .table import RATIOS, markdown

__all__ = ["BASELINES", "CASES", "QUICK_CASES", "RANK_BASELINES", "RANK_CASES", "RATIOS", "Case", "main", "markdown",
           "peak_memory", "run", "run_rank_aware"]
