"""The house rules, checked: layers point down only, every module has its layer, a worker loads no dev tool.

The layer contract itself lives in pyproject.toml ([tool.importlinter]) and runs in `make lint`; these
tests prove that it can fail (an upward import added to a copy of the tree breaks it) and that it
leaves no module out.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from whistle.ground.settings import PROJECT_ROOT

PACKAGES = ("whistle", "streams", "schemas", "sinks", "infra")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _layers() -> list[list[str]]:
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [[name.strip() for name in layer.replace(":", "|").split("|")] for layer in contract["layers"]]


def _modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def _copy_tree(target: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", ".whistle"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_every_module_of_ours_sits_in_exactly_one_layer():
    layers = [module for layer in _layers() for module in layer]
    unplaced = []
    for module in _modules():
        owners = [layer for layer in layers if module == layer or module.startswith(layer + ".")]
        if len(owners) != 1 and module not in PACKAGES and module != "streams.reference":  # empty package markers and a data folder
            unplaced.append((module, owners))
    assert unplaced == []


def test_the_layer_contract_holds_and_fails_on_an_upward_import(tmp_path):
    clean = _lint_imports(_copy_tree(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    broken = _copy_tree(tmp_path / "broken")
    model = broken / "streams" / "domain" / "model.py"
    model.write_text(model.read_text(encoding="utf-8") + "\nimport sinks.sink  # the domain reaching up into the sink\n", encoding="utf-8")
    result = _lint_imports(broken)
    assert result.returncode != 0
    assert "streams.domain.model -> sinks.sink" in result.stdout


def test_a_worker_process_loads_no_dev_tool():
    code = ("import sys, whistle.cli, streams.app, sinks.sink; "
            "print(sorted(m for m in sys.modules if m.startswith('whistle.devtools')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert loaded == "[]"
