"""The benchmark (eigpool-bench) and the prepared GPU check: same layers as eigpool, command lines, and the GPU
check's code path on the CPU. No timing is asserted anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mpmath")  # the original SVD-Pade layer computes its coefficients with mpmath

from eigpool.validation import bench  # noqa: E402
from eigpool.validation.bench import cli, gpu, layers, timing  # noqa: E402

F64 = torch.float64
TESTS = Path(__file__).resolve().parent


def test_every_baseline_computes_the_same_layer():
    # Every exact method (plain eigh, matrix_sqrth, SVD-Pade, the floor) gives eigpool's vector and gradient on a
    # well-conditioned covariance (N = 40 > d = 5: distinct eigenvalues); the two Newton-Schulz layers agree.
    groups = (("eigpool_exact", "torch_eigh", "torch_sqrth", "svd_pade", "floor"), ("eigpool_ns", "torch_ns"))
    assert {name for group in groups for name in group} == set(bench.BASELINES)  # a new baseline joins a group
    case = bench.Case(2, 5, 40, "float64")
    X = torch.randn(2, 5, 40, dtype=F64, generator=torch.Generator().manual_seed(0))
    w = torch.randn(2, 15, dtype=F64, generator=torch.Generator().manual_seed(1))
    results = {}
    for name, build in bench.BASELINES.items():
        x = X.clone().requires_grad_(True)
        y = build(case, "cpu")(x)
        y.backward(w)
        results[name] = (y.detach(), x.grad)
    for group in groups:
        for name in group[1:]:
            for a, b in zip(results[name], results[group[0]], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")


def test_eigpool_exact_is_the_square_root_of_the_covariance():
    # The reference of the group above, against an independent one: NumPy's covariance and SciPy's sqrtm.
    sl = pytest.importorskip("scipy.linalg")
    X = np.random.default_rng(2).standard_normal((2, 5, 40))
    y = bench.BASELINES["eigpool_exact"](bench.Case(2, 5, 40, "float64"), "cpu")(torch.tensor(X))
    i, j = np.triu_indices(5)
    for b in range(2):
        ref = np.real(sl.sqrtm(np.cov(X[b], bias=True)))
        np.testing.assert_allclose(y[b].numpy(), ref[i, j], rtol=1e-10, atol=1e-12)


def test_pade_coefficients_reproduce_the_geometric_series():
    # METHODS.md: the [50/50] approximant equals 1/(1-x) to ~5e-12 on [0, 0.999] and has Q(1) = 0.
    p, q = layers.pade_coefficients()
    x = np.linspace(0, 0.999, 50)
    P, Q = np.polyval(p[::-1], x), np.polyval(q[::-1], x)
    np.testing.assert_allclose(P / Q, 1 / (1 - x), rtol=1e-10)
    assert abs(sum(q)) < 1e-15


def test_quick_mode_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        status = bench.main(["--quick", "--batch", "2", "--dim", "4", "--positions", "9", "--dtype", "float64",
                             "--repeats", "1", "--warmup", "0", "--min-seconds", "0", "--json", str(out),
                             "--markdown"])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    report = json.loads(out.read_text())
    assert report["environment"]["threads"] == 1 and "torch" in report["environment"]["versions"]
    (row,) = report["results"]
    assert row["case"] == {"batch": 2, "dim": 4, "positions": 9, "dtype": "float64"}
    assert set(row["seconds"]) == set(bench.BASELINES)
    assert set(row["ratios"]) == {col for col, _, _ in bench.RATIOS}
    assert row["ratios"]["sqrth/exact"] == row["seconds"]["torch_sqrth"] / row["seconds"]["eigpool_exact"]
    printed = capsys.readouterr().out
    assert "| B=2 d=4 N=9 float64 |" in printed and "sqrth/exact" in printed


def test_python_m_runs_the_same_command_line():
    done = subprocess.run([sys.executable, "-m", "eigpool.validation.bench", "--help"], capture_output=True, text=True,
                          check=True)
    assert "usage: eigpool-bench" in done.stdout and "--rank-aware" in done.stdout and "torch_sqrth" in done.stdout


def test_rank_aware_bench_reports_time_memory_and_ratios():
    case = bench.Case(2, 24, 6, "float32")
    # One real fresh-process measurement; the table itself with a stand-in (each child process imports torch).
    measured = bench.peak_memory(case, "eigpool_auto")
    assert measured["peak"] >= measured["before"] > 0
    sizes = {"eigpool_auto": 100.0, "eigpool_dense": 150.0, "svd_pade": 300.0, "torch_sqrth": 120.0}

    def memory(case, name, *args):
        return {"before": 50.0, "peak": sizes[name]}

    lines = []
    (result,) = bench.run_rank_aware([case], repeats=1, log=lines.append, memory=memory)["results"]
    assert set(result["seconds"]) == set(bench.RANK_BASELINES) == set(result["peak_mib"])
    assert result["ratios"]["MiB dense/auto"] == 1.5
    assert set(result["ratios"]) == {"pade/auto", "dense/auto", "sqrth/auto", "MiB dense/auto"}
    assert len(lines) == 3 and "B=2 d=24 N=6 float32" in lines[-1]
    # A subset of methods gives the ratios it can; the command line picks cases and methods.
    (result,) = bench.run_rank_aware([case], ["eigpool_auto", "eigpool_dense"], repeats=1, log=lines.append,
                                     memory=memory)["results"]
    assert set(result["ratios"]) == {"dense/auto", "MiB dense/auto"}
    args = cli.parse(["--rank-aware", "--dim", "256", "--positions", "49", "196", "--methods", "eigpool_auto"])
    assert cli.cases_from(args, bench.RANK_CASES) == [bench.Case(4, 256, 49, "float32"),
                                                      bench.Case(4, 256, 196, "float32")]
    with pytest.raises(SystemExit):
        cli.parse(["--methods", "eigpool_auto"])  # a method of the rank-aware table only


def _counting(calls):
    """A builder whose layer counts its calls (a differentiable stand-in for a slow layer)."""
    def build(case, device):
        def layer(X):
            calls.append(time.perf_counter())
            d = X.shape[1]
            return (X * X).sum() * torch.ones(X.shape[0], d * (d + 1) // 2, dtype=X.dtype)
        return layer
    return build


def test_time_cap_stops_a_case_after_one_timed_round():
    case = bench.Case(1, 3, 4, "float64")
    calls = []
    seconds = timing.time_case(case, {"slow": _counting(calls)}, warmup=1, repeats=5, min_seconds=0.0, seed=0,
                               max_seconds=0.0)
    assert len(calls) == 2 and set(seconds) == {"slow"}  # the warm-up round and one timed round
    calls.clear()
    timing.time_case(case, {"slow": _counting(calls)}, warmup=0, repeats=5, min_seconds=0.0, seed=0)
    assert len(calls) == 5


# ---------------------------------------------------------------------------------------------------------------------
# The GPU check.

def test_gpu_check_cpu_quick_mode_writes_everything(tmp_path, capsys):
    out, data = tmp_path / "gpu_check.md", tmp_path / "gpu_check.json"
    status = gpu.main(["--device", "cpu", "--quick", "--out", str(out), "--json", str(data),
                       "--tests", str(TESTS / "test_cupy.py")])
    assert status == 0
    text = out.read_text()
    report = json.loads(data.read_text())
    assert text.startswith("# eigpool GPU check\n") and "## Environment" in text and "## Tests" in text
    assert f"torch {torch.__version__}" in text and "no GPU: --device cpu" in text
    assert "-k 'cuda or cupy'" in report["tests"]["command"] and report["tests"]["returncode"] in (0, 5)
    assert report["tests"]["summary"] in text
    header = "| case | " + " | ".join(gpu.GPU_METHODS) + " | pade/exact | torch/exact | sqrth/exact |"
    assert header in text
    assert [r["case"] for r in report["results"]] == [vars(c) for c in bench.cases.GPU_QUICK_CASES]
    assert all(set(r["seconds"]) == set(gpu.GPU_METHODS) for r in report["results"])
    assert all(f"| {bench.Case(**r['case'])} | " in text for r in report["results"])
    assert "[2/2] GPU table" in capsys.readouterr().out


def test_gpu_check_without_a_device_fails_fast(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "run_tests", pytest.fail)  # nothing may run before the device check
    out = tmp_path / "gpu_check.md"
    assert gpu.main(["--out", str(out)]) == 2
    assert "no CUDA device: torch.cuda.is_available() is False" in capsys.readouterr().err
    assert not out.exists()


def test_gpu_table_records_failures_and_the_spent_budget(monkeypatch):
    def broken(case, device):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(layers.BASELINES, "svd_pade", broken)
    cases = bench.cases.GPU_QUICK_CASES
    results = gpu.run_gpu_table(cases, "cpu", repeats=1, log=lambda line: None)
    assert [r["error"] for r in results] == ["RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"] * 2
    results += gpu.run_gpu_table(cases, "cpu", deadline=time.perf_counter(), log=lambda line: None)
    assert results[-1]["error"] == "not run: the time budget was spent"
    table = bench.markdown({"results": results})
    assert f"| {cases[0]} | failed: RuntimeError: CUDA out of memory." in table
