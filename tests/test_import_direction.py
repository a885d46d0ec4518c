"""Imports follow the data flow: configs ← reward_service ← actors ← learner ← deploy. A package may import only
the ones to its left, so e.g. the learner never reaches into the driver and the reward service knows no actor."""

import ast
from pathlib import Path

import pytest

ORDER = ["configs", "reward_service", "actors", "learner", "deploy"]
ROOT = Path(__file__).resolve().parent.parent


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ORDER)


@pytest.mark.parametrize("package", ORDER)
def test_package_imports_only_upstream(package):
    allowed = set(ORDER[: ORDER.index(package) + 1])
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    wrong = {str(f.relative_to(ROOT)): sorted(imported_packages(f) - allowed) for f in files}
    assert not {f: w for f, w in wrong.items() if w}, f"{package} may import only {sorted(allowed)}"


def test_the_check_sees_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import deploy.train\nfrom learner.buffer import Buffer\nfrom . import sibling\nimport numpy\n"
                      "def f():\n    from actors import policy\n")
    assert imported_packages(module) == {"deploy", "learner", "actors"}
