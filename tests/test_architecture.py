"""The import contracts in pyproject.toml ([tool.importlinter]) hold for igmu, and can fail.

import-linter runs in a subprocess: it finds the root package through the import system, and only a
fresh interpreter with PYTHONPATH set sees a modified copy of igmu instead of the one this test
session (and the editable install) already imported.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
CONTRACTS = {c["id"]: c["name"] for c in tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]}


def lint_imports(source_root: Path, cwd: Path) -> tuple[int, str, set[str]]:
    """Exit status, output and the ids of the broken contracts, for the igmu found under source_root."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache", "--no-logo", str(PYPROJECT)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    broken = {cid for cid, name in CONTRACTS.items() if re.search(rf"^{re.escape(name)} BROKEN$", output, re.M)}
    return result.returncode, output, broken


def test_contracts_are_configured():
    assert set(CONTRACTS) == {"layers", "no-ray-in-core", "acyclic"}


def test_igmu_keeps_its_import_contracts(tmp_path):
    returncode, output, broken = lint_imports(REPO, cwd=tmp_path)
    assert returncode == 0 and not broken, output
    for name in CONTRACTS.values():
        assert re.search(rf"^{re.escape(name)} KEPT$", output, re.M), output
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in output


@pytest.mark.parametrize("module, line, expected_broken, offending", [
    # the bottom layer reaching the top also closes a cycle (cli imports world) and, through the CLI's
    # serve commands, hands Ray to every algorithm and metric that reads the concepts
    ("world/concepts.py", "import igmu.cli.main", {"layers", "acyclic", "no-ray-in-core"},
     "igmu.world.concepts -> igmu.cli.main"),
    ("algorithms/esd.py", "import ray", {"no-ray-in-core"}, "igmu.algorithms.esd -> ray"),
    # both modules are in one layer, so only the cycle contract can see this
    ("algorithms/common.py", "import igmu.algorithms.esd", {"acyclic"}, "- .common -> .esd"),
], ids=["upward-import", "ray-in-algorithms", "cycle-within-a-layer"])
def test_a_deliberate_violation_breaks_its_contract(tmp_path, module, line, expected_broken, offending):
    copy = tmp_path / "src"
    shutil.copytree(REPO / "igmu", copy / "igmu", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    target = copy / "igmu" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    returncode, output, broken = lint_imports(copy, cwd=tmp_path)
    assert returncode != 0, output
    assert broken == expected_broken, output
    assert offending in output, output


KIND_NAMES = ("world", "sd", "i2i", "t2i")
# A kind (or a metric family) compared with a name: `x.kind == "sd"`, `"i2i" in kinds`, `family != "t2i"`.
KIND_BY_NAME = re.compile(
    r"""(?:\b(?:kind|kinds|generator_kinds|family)\b\s*(?:==|!=|\bin\b|\bnot in\b)\s*\(?\s*["'](?:%s)["'])"""
    r"""|(?:["'](?:%s)["']\s*(?:==|!=|\bin\b|\bnot in\b)\s*[\w.]*\b(?:kind|kinds|generator_kinds|family)\b)"""
    % ("|".join(KIND_NAMES), "|".join(KIND_NAMES)))


def test_no_module_compares_a_generator_kind_by_name():
    """Shared code asks a generator's kind class; only the kind classes themselves know their names."""
    kind_homes = {REPO / "igmu" / "models" / name for name in ("kinds.py", "text_to_image.py", "image_to_image.py")}
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for root in ("igmu", "bench") for path in sorted((REPO / root).rglob("*.py")) if path not in kind_homes
             for number, line in enumerate(path.read_text().splitlines(), start=1) if KIND_BY_NAME.search(line)]
    assert found == []


def test_the_kind_name_check_can_fail():
    for line in ('if generator.kind == "sd":', 'if "i2i" in cls.generator_kinds:', 'family != "t2i"',
                 "if model.kind in ('world', 'i2i'):"):
        assert KIND_BY_NAME.search(line), line
