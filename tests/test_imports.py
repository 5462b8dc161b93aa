"""The core never imports a framework: importing eigpool and using it on NumPy arrays loads no torch or cupy."""

from __future__ import annotations

import subprocess
import sys


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
