"""The README is part of the product: its examples run, and .ci/run runs exactly its test command."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_examples_run(index):
    code = _blocks("python")[index]
    if "import torch" in code:
        pytest.importorskip("torch")
    exec(compile(code, f"README.md python block {index}", "exec"), {})


DOCS = ("transforms.md", "jax.md", "spd.md")


@pytest.mark.parametrize(("doc", "index"), [(doc, i) for doc in DOCS for i in range(
    len(re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(), flags=re.S)))])
def test_documented_python_examples_run(doc, index):
    code = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(), flags=re.S)[index]
    pytest.importorskip("jax" if "import jax" in code else "torch")
    exec(compile(textwrap.dedent(code), f"docs/{doc} python block {index}", "exec"), {})


def test_ci_runs_the_readme_test_command():
    commands = [line for block in _blocks("bash") for line in block.splitlines() if "pytest" in line]
    assert len(commands) == 1
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[0].strip() in ci_lines
