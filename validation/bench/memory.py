"""Peak resident memory of one forward + backward step, measured in a fresh process (the rank-aware table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

from .cases import Case
from .layers import RANK_BASELINES
from .timing import inputs

__all__ = ["peak_memory"]


def _max_rss_mib() -> float:
    """This process's peak resident set size in MiB: VmHWM of /proc/self/status. Not ru_maxrss: Linux carries it
    over from the forking parent through exec, so a child of a large process would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def memory_child(case: dict, method: str, threads: int, seed: int) -> None:
    """The child side of ``peak_memory``: one forward + backward, then print the sizes as JSON (MiB)."""
    import torch

    torch.set_num_threads(threads)
    c = Case(**case)
    X, w = inputs(c, seed)
    layer = RANK_BASELINES[method](c, "cpu")
    before = _max_rss_mib()
    layer(X.requires_grad_(True)).backward(w)
    print(json.dumps({"before": before, "peak": _max_rss_mib()}))


def peak_memory(case: Case, method: str, threads: int = 1, seed: int = 0) -> dict[str, float]:
    """Peak resident memory (MiB) of a fresh process running one forward + backward of ``RANK_BASELINES[method]``:
    {"before": its peak before the layer ran (interpreter, torch, inputs), "peak": its peak at the end}."""
    code = (f"from eigpool.validation.bench.memory import memory_child; "
            f"memory_child({asdict(case)!r}, {method!r}, {threads}, {seed})")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench: the memory run of {method} on {case} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
