"""The prepared GPU check: one command that runs the CUDA and CuPy tests and the GPU benchmark, and writes one file.

    python -m eigpool.validation.bench.gpu --out gpu_check.md          # on a CUDA machine, under 8 minutes
    python -m eigpool.validation.bench.gpu --device cpu --quick --out /tmp/gpu_check.md   # the code path, anywhere

Steps: (1) without a CUDA device it stops at once, with the reason (unless ``--device cpu``); (2) the tests whose names
mention CUDA or CuPy (``pytest -k "cuda or cupy"`` over the repository's ``tests/``, every test of
``tests/test_cupy.py`` included), with a time limit; (3) the GPU table: ``GPU_CASES`` (B in {32, 64}, d = 256,
N in {196, 784}, float32 and float64) for ``GPU_METHODS`` (eigpool exact, eigpool Newton-Schulz, plain eigh +
autograd, ``torch.linalg.matrix_sqrth``, the original SVD-Pade layer), each step bracketed by
``torch.cuda.synchronize`` on the wall clock, round robin, the median of at most ``--repeats`` rounds after one
warm-up round, each case stopped after ``--case-seconds`` and the whole run kept inside ``--budget``; (4) the
environment (GPU, driver, torch and CUDA versions), the test summary and the table, in Markdown, to ``--out``.
Progress goes to stdout. Exit status: 0 if the tests passed and every case was timed, 1 otherwise, 2 without a device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .cases import GPU_CASES, GPU_QUICK_CASES, Case
from .layers import BASELINES
from .table import header, markdown, ratios, row, row_header
from .timing import environment, time_case

__all__ = ["GPU_METHODS", "gpu_environment", "main", "run_gpu_table", "run_tests"]

GPU_METHODS = ("eigpool_exact", "eigpool_ns", "torch_eigh", "torch_sqrth", "svd_pade")
#: The pytest selection of the CUDA and CuPy tests.
TEST_SELECTION = "cuda or cupy"


def _log(message: str) -> None:
    print(message, flush=True)


def gpu_environment(device: str) -> dict[str, Any]:
    """The CPU record of ``timing.environment`` plus the device: name, compute capability, memory, CUDA, cuDNN and
    driver versions, float32 matmul precision, and CuPy's version where it imports."""
    import torch

    env = environment(torch.get_num_threads())
    env["device"] = device
    env["versions"]["torch_cuda"] = torch.version.cuda
    env["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = (f"{props.name} (compute capability {props.major}.{props.minor}, "
                      f"{props.total_memory / 2**30:.0f} GiB)")
        env["versions"]["cudnn"] = torch.backends.cudnn.version()
        env["driver"] = _nvidia_smi("driver_version")
    else:
        env["gpu"] = f"no GPU: --device {device} (the code path only; the times are the CPU's)"
    try:
        import cupy

        env["versions"]["cupy"] = cupy.__version__
    except Exception as exc:  # not installed, or installed without a usable CUDA runtime: say which
        env["versions"]["cupy"] = f"unavailable ({type(exc).__name__}: {exc})"[:160]
    return env


def _nvidia_smi(field: str) -> str:
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({type(exc).__name__})"
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"


def _default_tests() -> list[str]:
    """The repository's tests folder (a source checkout), else ./tests; empty if neither exists."""
    for folder in (Path(__file__).resolve().parents[2] / "tests", Path.cwd() / "tests"):
        if folder.is_dir():
            return [str(folder)]
    return []


def run_tests(paths: Sequence[str], timeout: float) -> dict[str, Any]:
    """``pytest -q -rs -k "cuda or cupy"`` over ``paths`` in a subprocess: {command, returncode, summary (the last
    line), skipped (the reasons), output (its tail when it did not pass), seconds}."""
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", TEST_SELECTION, *paths]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = None, f"{_text(exc.stdout)}{_text(exc.stderr)}\n(stopped after the {timeout:.0f} s limit)"
    lines = [line for line in output.splitlines() if line.strip()]
    return {"command": shlex.join(command), "returncode": code, "summary": lines[-1] if lines else "(no output)",
            "skipped": [line for line in lines if line.startswith("SKIPPED")],
            "output": "" if code == 0 else "\n".join(lines[-60:]), "seconds": time.perf_counter() - start}


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""


def run_gpu_table(cases: Sequence[Case], device: str, *, repeats: int = 5, case_seconds: float = 25.0,
                  deadline: float = math.inf, seed: int = 0, log: Callable[[str], None] = _log) -> list[dict]:
    """Time ``GPU_METHODS`` on ``cases``: [{case, seconds, ratios} or {case, error}, ...]. A case gets at most
    ``case_seconds`` and its share of the time left before ``deadline`` (a ``time.perf_counter`` value); a case that
    raises (out of memory, a missing package) is recorded with its error and the run goes on."""
    import torch

    methods = {name: BASELINES[name] for name in GPU_METHODS}
    results: list[dict] = []
    log(row_header(list(methods)))
    for k, case in enumerate(cases):
        left = deadline - time.perf_counter()
        if left <= 0:
            results.append({"case": asdict(case), "error": "not run: the time budget was spent"})
            log(f"{case!s:<28} not run: the time budget was spent")
            continue
        cap = min(case_seconds, left / (len(cases) - k))
        try:
            seconds = time_case(case, methods, warmup=1, repeats=repeats, min_seconds=0.0, seed=seed,
                                clock=time.perf_counter, device=device, max_seconds=cap)
        except Exception as exc:  # one failed case must not cost the others: record it and go on
            results.append({"case": asdict(case), "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]})
            log(f"{case!s:<28} failed: {results[-1]['error']}")
        else:
            results.append({"case": asdict(case), "seconds": seconds, "ratios": ratios(seconds)})
            log(row(case, list(methods), seconds, results[-1]["ratios"]))
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return results


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m eigpool.validation.bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check.md", help="the Markdown file to write (default %(default)s)")
    ap.add_argument("--json", default="", help="also write every figure as JSON to this file")
    ap.add_argument("--device", default="cuda", help="torch device (default cuda; cpu only to exercise the code)")
    ap.add_argument("--quick", action="store_true", help="tiny cases, one round: seconds, for tests")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per case, at most (default %(default)s)")
    ap.add_argument("--case-seconds", type=float, default=25.0,
                    help="time limit per case, warm-up included (default %(default)s)")
    ap.add_argument("--budget", type=float, default=420.0,
                    help="time limit of the whole check, tests included (default %(default)s s)")
    ap.add_argument("--tests", nargs="*", default=None,
                    help="test files or folders for pytest -k 'cuda or cupy' (default: the repository's tests/; "
                         "none: skip the tests)")
    ap.add_argument("--tests-seconds", type=float, default=150.0,
                    help="time limit of the tests (default %(default)s s)")
    return ap.parse_args(argv)


def _require_device(device: str) -> str | None:
    """None if ``device`` can be used, else the reason it cannot (checked before any other work)."""
    try:
        import torch
    except ImportError as exc:
        return f"PyTorch is not installed ({exc}); install eigpool's torch extra: pip install -e '.[all,test]'"
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        return f"--device {device!r} is not a torch device ({exc})"
    if kind == "cuda" and not torch.cuda.is_available():
        return (f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, built for CUDA "
                f"{torch.version.cuda or 'none'}). Run this check on a machine with an NVIDIA GPU, or pass "
                "--device cpu --quick to exercise its code path")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check and write ``--out``; returns the exit status (0 passed, 1 a test or a case failed, 2 no device)."""
    args = _parse(argv)
    problem = _require_device(args.device)
    if problem is not None:
        print(f"eigpool GPU check: {problem}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    deadline = start + args.budget
    given = list(argv) if argv is not None else sys.argv[1:]
    command = shlex.join(["python", "-m", "eigpool.validation.bench.gpu", *given])
    env = gpu_environment(args.device)
    _log(f"eigpool GPU check on {env['gpu']}; torch {env['versions']['torch']} (CUDA {env['versions']['torch_cuda']})")
    paths = _default_tests() if args.tests is None else args.tests
    if paths:
        _log(f"[1/2] tests: pytest -k {TEST_SELECTION!r} {' '.join(paths)} (limit {args.tests_seconds:.0f} s)")
        tests = run_tests(paths, min(args.tests_seconds, args.budget / 2))
        _log(f"      {tests['summary']} ({tests['seconds']:.0f} s)")
    else:
        tests = {"command": "", "returncode": None, "summary": "not run (no tests folder given or found)",
                 "skipped": [], "output": "", "seconds": 0.0}
        _log("[1/2] tests: not run (no tests folder given or found)")
    cases = GPU_QUICK_CASES if args.quick else GPU_CASES
    repeats = 1 if args.quick else args.repeats
    _log(f"[2/2] GPU table: {len(cases)} cases x {len(GPU_METHODS)} methods, at most {args.case_seconds:.0f} s each")
    _log(header(env))
    results = run_gpu_table(cases, args.device, repeats=repeats, case_seconds=args.case_seconds, deadline=deadline)
    report = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "seconds": time.perf_counter() - start, "environment": env, "tests": tests, "repeats": repeats,
              "case_seconds": args.case_seconds, "results": results}
    Path(args.out).write_text(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    _log(f"wrote {args.out} in {report['seconds']:.0f} s")
    # pytest's 5: nothing was selected or every module skipped itself (CuPy absent): not a failure, and said so.
    tests_passed = tests["returncode"] in (0, 5) or not paths
    return 0 if tests_passed and all("seconds" in r for r in results) else 1


def render(report: dict) -> str:
    """The check's Markdown: environment, test summary, the table and how it was measured."""
    env, tests = report["environment"], report["tests"]
    v = env["versions"]
    lines = ["# eigpool GPU check", "",
             f"`{report['command']}`, {report['date']}, {report['seconds']:.0f} s.", "",
             "## Environment", "",
             f"- device: {env['device']}, {env['gpu']}" + (f", driver {env['driver']}" if "driver" in env else ""),
             f"- torch {v['torch']} (CUDA {v['torch_cuda']}, cuDNN {v.get('cudnn', '-')}), float32 matmul precision "
             f"{env['float32_matmul_precision']}",
             f"- eigpool {v['eigpool']}, NumPy {v['numpy']}, Python {v['python']}, mpmath {v.get('mpmath', '-')}, "
             f"CuPy {v['cupy']}",
             f"- host: {env['cpu']}, {env['system']} {env['machine']}, {env['torch_threads']} torch threads", "",
             "## Tests", "",
             f"`{tests['command'] or '-'}` (exit status {tests['returncode']}"
             + (": no test ran" if tests["returncode"] == 5 else "") + f", {tests['seconds']:.0f} s):", "",
             f"    {tests['summary']}", ""]
    if tests["skipped"]:
        lines += ["Skipped:", ""] + [f"    {line}" for line in tests["skipped"]] + [""]
    if tests["output"] and tests["returncode"] != 5:
        lines += ["Output (tail):", "", "```text", tests["output"], "```", ""]
    lines += ["## Table", "",
              "Median ms per forward + backward (wall clock; on a CUDA device each step lies between two "
              "`torch.cuda.synchronize` calls), "
              f"after one warm-up round, at most {report['repeats']} round-robin rounds and "
              f"{report['case_seconds']:.0f} s per case. Every method computes in the case's dtype (eigpool with "
              "`compute_dtype=None`). Ratios above 1: eigpool's exact layer is faster.", "",
              markdown(report), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
