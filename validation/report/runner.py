"""``run``: measure everything, then write the report's JSON, Markdown and figures."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import eigpool

from .cases import QUICK, Config, families, short_label
from .figures import plot_heatmap, plot_kernels, plot_sweep
from .iccv import bounds_table, kernel_table
from .measure import fd_checks, method_errors, reference_check
from .text import markdown

__all__ = ["run"]


def run(out_dir: str | os.PathLike, *, quick: bool = False, seed: int = 0, progress: bool = True,
        command: str = "python -m eigpool.validation") -> dict:
    """Measure everything and write ``accuracy.md``, ``accuracy.json`` and ``figures/*.png`` into ``out_dir``.

    quick: a small configuration (d = 6, fewer samples and families) that runs in seconds, for tests.
    Returns the results dictionary that is written to the JSON file.
    """
    from tqdm import tqdm

    cfg = QUICK if quick else Config()
    fams = families(cfg.gaps, cfg.conditions, cfg.d)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    n_ref = cfg.mp_samples * sum(f.kind != "singular" for f in fams)
    bar = tqdm(total=n_ref + cfg.samples * len(fams) + 12, disable=not progress, unit="step",
               desc="eigpool accuracy")

    def stage(name: str) -> Callable[[], None]:
        bar.set_description(name)
        return lambda: bar.update(1)

    import mpmath

    results: dict[str, Any] = {"families": [
        {"key": f.key, "label": f.label, "short": short_label(f), "sweep": f.sweep[0] if f.sweep else None,
         "value": f.sweep[1] if f.sweep else None} for f in fams]}
    results["reference"] = reference_check(cfg, fams, seed, stage("mpmath reference"))
    results["methods"] = method_errors(cfg, fams, seed, stage("methods x families"))
    tick = stage("ICCV tables")
    results["kernel_table"] = kernel_table()
    tick()
    results["bounds"] = bounds_table(results["kernel_table"])
    tick()
    results["fd_checks"] = fd_checks(cfg, seed, stage("finite differences"))
    tick = stage("figures")
    plot_sweep(results, "gap", out / "figures" / "gradient_error_vs_gap.png",
                f"sqrtm gradient error vs eigen-gap (clustered spectra, d = {cfg.d})", "relative gap inside clusters",
                cfg.mp_d)
    tick()
    plot_sweep(results, "condition", out / "figures" / "gradient_error_vs_condition.png",
                f"sqrtm gradient error vs condition number (d = {cfg.d})", "condition number", cfg.mp_d)
    tick()
    plot_kernels(results["kernel_table"], out / "figures" / "kernel_approximation.png")
    tick()
    plot_heatmap(results, out / "figures" / "method_heatmap.png")
    tick()
    bar.close()
    results["meta"] = {
        "command": command + (" --quick" if quick else ""), "quick": quick, "seed": seed, "d": cfg.d,
        "samples": cfg.samples, "mp_samples": cfg.mp_samples, "mp_d": cfg.mp_d, "mp_dps": cfg.mp_dps,
        "seconds": time.perf_counter() - start, "eigpool": eigpool.__version__, "numpy": np.__version__,
        "mpmath": mpmath.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "figures": sorted(p.name for p in (out / "figures").glob("*.png")),
    }
    (out / "accuracy.json").write_text(json.dumps(_jsonable(results), indent=1, allow_nan=True))
    (out / "accuracy.md").write_text(markdown(results))
    return results


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
