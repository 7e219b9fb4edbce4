"""The package as a user and a contributor meet it: what the wheel holds, module sizes, no reaching into private names.

The layer order itself is checked by ``lint-imports`` (``pyproject.toml``), which CI runs before the tests.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import decouple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "decouple"
MODULES = sorted(PACKAGE.rglob("*.py"))
DATA = sorted(p for p in (PACKAGE / "experiments" / "data").iterdir() if p.is_file())


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines: split it along a concept"


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for path in MODULES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("decouple")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {', '.join(private)}")
    assert not found, "\n".join(found)


def test_the_version_has_one_home() -> None:
    from decouple._version import __version__

    assert decouple.__version__ == __version__
    assert "version = " not in (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]


@pytest.mark.timeout(300)
def test_the_wheel_holds_every_module_the_data_and_py_typed(tmp_path: Path) -> None:
    """``python -m build`` makes the sdist, then the wheel from it: a user installing from the index gets the same files."""
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    wheels = list(tmp_path.glob("*.whl"))
    assert len(wheels) == 1 and list(tmp_path.glob("*.tar.gz")), sorted(p.name for p in tmp_path.iterdir())
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    expected = {str(p.relative_to(ROOT)) for p in [*MODULES, *DATA, PACKAGE / "py.typed"]}
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheels[0]).read(metadata).decode()
    assert f"Version: {decouple.__version__}" in text
    entry_points = zipfile.ZipFile(wheels[0]).read(metadata.replace("METADATA", "entry_points.txt")).decode()
    assert "decouple = decouple.cli:main" in entry_points
