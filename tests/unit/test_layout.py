"""The import rule that keeps the tree's layers apart: core/ is the shared
library and imports neither program; feeder/ and nommerd/ import core/ and
never each other, so either can be deployed without the other."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "core": {"feeder", "nommerd", "provisioning", "tests"},
    "feeder": {"nommerd", "provisioning", "tests"},
    "nommerd": {"feeder", "provisioning", "tests"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level package names that `path` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_the_layers_it_must_not_know(package):
    offenders = {
        str(path.relative_to(PROJECT_DIR)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((PROJECT_DIR / package).rglob("*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_each_seam_has_its_own_package_with_one_file_per_implementation():
    core = PROJECT_DIR / "core"
    expected = {
        "stores": {"sqlite", "simpledb", "dynamodb"},
        "queues": {"sqlite", "sqs"},
        "fleets": {"supervisor", "ec2"},
        "storage": {"file", "http", "s3", "router"},
    }
    for package, modules in expected.items():
        found = {path.stem for path in (core / package).glob("*.py")}
        assert modules <= found, f"core/{package}/ lacks {sorted(modules - found)}"
        docstring = ast.get_docstring(ast.parse((core / package / "__init__.py").read_text()))
        assert docstring, f"core/{package}/__init__.py says what lives there"


def test_the_checker_sees_an_import_hidden_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from feeder.api import main\n    import nommerd.daemon\n")
    assert imported_packages(module) == {"feeder", "nommerd"}
