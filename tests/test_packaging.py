"""The wheel carries every module of the checkout: build it, install it apart from the checkout,
and import each module from the installed copy (a subpackage missing from pyproject's package
list would otherwise vanish from the wheel and the image without a single failing import here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.hostenv import REPO_ROOT

pytestmark = pytest.mark.slow

TOP_LEVEL = ("agent_cli", "agent_config", "supervisor")


def checkout_modules() -> list[str]:
    """Every importable module of the checkout's packages, by dotted name."""
    names = list(TOP_LEVEL)
    for package in ("actors", "messages"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def clean_copy(destination: Path) -> Path:
    """The checkout's files as git sees them (tracked, or new and not ignored): a stale
    ``build/`` directory would otherwise put modules into the wheel that its config leaves out."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=60,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def test_the_installed_wheel_imports_every_module_of_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    source = clean_copy(tmp_path / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "--disable-pip-version-check", "-w", str(wheels), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("dockmon_agent-*.whl")
    modules = checkout_modules()
    with zipfile.ZipFile(wheel) as archive:
        packaged = {
            name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            for name in archive.namelist()
            if name.endswith(".py")
        }
    assert sorted(set(modules) - packaged) == []
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(target)!r}), module.__file__\n"
    )
    # -I -S: isolated, no site (the editable install's finder would serve the checkout): the
    # installed copy first, then the dependencies
    paths = [str(target), *(p for p in sys.path if p.endswith("site-packages"))]
    code = f"import sys; sys.path[:0] = {paths!r}\n{script}"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, *modules],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_third_party_package_the_code_imports_is_a_declared_dependency() -> None:
    """Not merely present because another dependency pulls it in (requests came with docker)."""
    import ast
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    own = {"actors", "messages", *TOP_LEVEL}
    imported: set[str] = set()
    for module in checkout_modules():
        parts = module.split(".")
        path = REPO_ROOT.joinpath(*parts).with_suffix(".py")
        if not path.exists():
            path = REPO_ROOT.joinpath(*parts, "__init__.py")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - own - set(sys.stdlib_module_names) - {"__future__"}
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    declared = {
        canonicalize_name(Requirement(r).name) for r in pyproject["project"]["dependencies"]
    }
    distributions = metadata.packages_distributions()
    undeclared = {
        name
        for name in third_party
        if not {canonicalize_name(d) for d in distributions.get(name, [name])} & declared
    }
    assert third_party and undeclared == set()
