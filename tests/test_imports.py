"""The core never imports a framework: importing eigpool and using it on NumPy arrays loads no torch or cupy."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import eigpool


def test_import_eigpool_loads_no_framework():
    code = ("import sys, numpy as np, eigpool; eigpool.vjp(eigpool.sqrtm, np.eye(3)); "
            "import eigpool.validation; "
            "print(sorted(m for m in ('torch', 'cupy', 'jax', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_subpackages_install_under_eigpool():
    code = ("import eigpool.backends, eigpool.validation, eigpool.models, importlib.util as u; "
            "print(u.find_spec('backends'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/").stdout
    assert out.strip() == "None"


def test_every_backend_offers_every_public_function():
    # The array functions of eigpool, under the same names, from one table (eigpool.ARRAY_FUNCTIONS); torch has its
    # own autodiff (no vjp). CuPy cannot be imported without a GPU: its module is read for the same table.
    functions = {n for n in eigpool.__all__ if inspect.isfunction(getattr(eigpool, n))} - {"bind", "spectral_spec",
                                                                                         "value_checks", "vjp"}
    assert functions == set(eigpool.ARRAY_FUNCTIONS)
    import eigpool.backends.numpy as np_backend
    import eigpool.backends.torch as torch_backend

    backends = [(np_backend, {"vjp"}), (torch_backend, {"GCPHead", "bind"})]
    if importlib.util.find_spec("jax") is not None:
        import eigpool.backends.jax as jax_backend

        backends.append((jax_backend, {"gcp_head", "bind"}))
    for module, extra in backends:
        assert functions | extra <= set(module.__all__)
        assert all(getattr(module, name) is getattr(eigpool, name) for name in functions)
    source = Path(importlib.util.find_spec("eigpool.backends").submodule_search_locations[0], "cupy.py").read_text()
    assert "eigpool.ARRAY_FUNCTIONS" in source


def test_packaging_ships_the_license_and_the_type_marker():
    # The wheel carries LICENSE (PEP 639 license-files) and eigpool/py.typed (PEP 561); checked by building one in
    # development (pip wheel . gives eigpool/py.typed and eigpool-*.dist-info/licenses/LICENSE).
    import tomllib

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["license-files"] == ["LICENSE"] and "BSD 3-Clause" in (root / "LICENSE").read_text()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["eigpool"]
    assert (root / "eigpool" / "py.typed").exists() and (root / "CHANGELOG.md").exists()
