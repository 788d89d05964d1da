"""The import direction and the installed packages: vlm_jax never imports data_prep (data_prep sits above it),
imports nothing by string, and `pip install` puts no `configs` package into site-packages."""
import ast
import fnmatch
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement and importlib.import_module call in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module"):
            found.append((node.lineno, "importlib.import_module"))
    return found


def test_vlm_jax_imports_no_data_prep_and_nothing_by_string():
    bad = [f"{path.relative_to(REPO)}:{line} imports {module}"
           for path in sorted((REPO / "vlm_jax").rglob("*.py")) for line, module in _imports(path)
           if module.split(".")[0] == "data_prep" or module == "importlib.import_module"]
    assert not bad, bad


def test_configs_is_not_an_installed_package():
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert any(fnmatch.fnmatch("vlm_jax.models", p) for p in find["include"])
    assert any(fnmatch.fnmatch("data_prep", p) for p in find["include"])
    assert not any(fnmatch.fnmatch(name, p) for p in find["include"] for name in ("configs", "configs.eval"))
    assert not (REPO / "configs" / "__init__.py").exists()
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
