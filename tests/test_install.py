"""Install: the README's set-up commands are what CI runs, and the CI constraints pin every declared
dependency to a version inside its declared range; with libtpu installed, CPU runs stay quiet."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(python3 -m venv .venv[^\n]*)\n```", (REPO / "README.md").read_text())


def test_ci_runs_the_readme_test_command_verbatim():
    commands = _readme_commands()
    assert len(commands) == 2, commands  # the demo and the tests
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
    for command in commands:
        assert "-c .ci/constraints.txt" in command


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_dependency_inside_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _constraints()
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    checked = 0
    for req in requirements:
        name = canonicalize_name(req.name)
        if name == "vlm-jax":
            continue
        assert name in pins, f"{req.name} is not pinned in .ci/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req}"
        assert str(req.specifier), f"{req.name}: give a compatible range"
        assert not any(s.operator == "==" for s in req.specifier), f"{req.name}: a range, not an exact pin"
        checked += 1
    assert checked > 20
    assert "libtpu" in pins  # the tpu extra through jax[tpu]


@pytest.mark.skipif(sys.platform != "linux", reason="TPU detection reads Linux sysfs")
def test_cpu_run_with_libtpu_installed_is_quiet():
    from vlm_jax.platforms import _installed, has_tpu_chips

    if not _installed("libtpu") or has_tpu_chips():
        pytest.skip("needs libtpu installed on a host without TPU chips")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", "import vlm_jax, jax, os; print(jax.default_backend(), "
                          "os.environ['JAX_PLATFORMS'])"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cpu", "cpu"]
    assert "TPU" not in out.stderr and "libtpu" not in out.stderr, out.stderr
    env["JAX_PLATFORMS"] = "cpu,tpu"  # an explicit choice is kept
    out = subprocess.run([sys.executable, "-c", "import vlm_jax, os; print(os.environ['JAX_PLATFORMS'])"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "cpu,tpu"
