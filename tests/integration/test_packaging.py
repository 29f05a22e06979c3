"""The built wheel, installed where a checkout cannot help: one import name, stubs, scripts.

The package-dir mapping in pyproject.toml installs services/ as `agent_infra` and client/ as
`agent_infra.client`, with every package listed by hand. A checkout hides mistakes there (the
repo root is on sys.path in tests, the editable install links the tree), so these tests build the
wheel from a copy of the sources and install it into a fresh venv in a temp directory that holds
an agent project's own `client.py` and `services/` package: imports, type information and the
console scripts must work from the wheel alone, and the project's own modules must win.

Fast and offline: the wheel goes in with --no-deps, and its dependencies come from this venv's
site-packages through a .pth file. Only site-packages' own .pth files are processed, so this
venv's editable install of agent_infra (itself a .pth file) does not leak in. On a slow 2-core
machine building and installing takes about 30 s, hence the generous timeouts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.wheelhouse import ensure as ensure_wheelhouse

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PACKAGES: list[str] = SETUPTOOLS["packages"]
PACKAGE_DIRS: dict[str, str] = SETUPTOOLS["package-dir"]
SCRIPTS = sorted(PYPROJECT["project"]["scripts"])
STEP_TIMEOUT_S = 300.0

pytestmark = pytest.mark.timeout(900)


def source_dir(package: str) -> Path:
    """Where `package` lives in the checkout, by the package-dir mapping (longest prefix)."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        mapped = PACKAGE_DIRS.get(".".join(parts[:cut]))
        if mapped is not None:
            return REPO / mapped / Path(*parts[cut:])
    return REPO / Path(*parts)


def package_of(directory: Path) -> str | None:
    """The import name of a checkout directory, by the package-dir mapping; None if unmapped."""
    best: tuple[int, str] | None = None
    for name, mapped in PACKAGE_DIRS.items():
        root = REPO / mapped
        if directory == root or root in directory.parents:
            depth = len(root.parts)
            if best is None or depth > best[0]:
                rest = directory.relative_to(root).parts
                best = (depth, ".".join((name, *rest)))
    return best[1] if best else None


def checkout_packages() -> set[str]:
    """Every directory with an __init__.py below the mapped roots, as an import name."""
    found: set[str] = set()
    for mapped in PACKAGE_DIRS.values():
        for init in (REPO / mapped).rglob("__init__.py"):
            name = package_of(init.parent)
            assert name is not None
            found.add(name)
    return found


def test_packages_list_names_every_package_in_the_checkout() -> None:
    """A subpackage missing from [tool.setuptools] packages is missing from the wheel."""
    listed = set(PACKAGES)
    assert checkout_packages() - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - checkout_packages() == set(), "listed but no such package in the checkout"
    for package in PACKAGES:
        assert (source_dir(package) / "__init__.py").is_file(), package


# --- the wheel, installed in a fresh venv --------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    project: Path  # the agent project: its own client.py and services/, and the cwd

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *argv: str | Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
        env["PYTHONNOUSERSITE"] = "1"
        return subprocess.run([str(arg) for arg in argv], cwd=self.project, env=env,
                              capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
                              check=False)


def run_checked(*argv: str | Path, cwd: Path) -> None:
    done = subprocess.run([str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=STEP_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}:\n{done.stdout}\n{done.stderr}"


def copy_sources(source: Path) -> Path:
    """What a build reads, copied: an in-tree build would write build/ and *.egg-info into the
    checkout, where the editable install and other test runs live."""
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for mapped in sorted(set(PACKAGE_DIRS.values())):
        shutil.copytree(REPO / mapped, source / mapped,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return source


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("packaging")
    source = copy_sources(root / "source")
    dist = root / "dist"
    run_checked(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--disable-pip-version-check", "--no-cache-dir", "-q", "-w", dist, source,
                cwd=root)
    (wheel,) = dist.glob("agent_infra-*.whl")

    venv = root / "venv"
    run_checked(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    python = venv / "bin" / "python"
    run_checked(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                "--no-index", "--disable-pip-version-check", "-q", wheel, cwd=root)
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, timeout=STEP_TIMEOUT_S).stdout.strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_agent_infra_test_deps.pth").write_text("".join(f"{path}\n" for path in ours))

    project = root / "project"
    (project / "services").mkdir(parents=True)
    (project / "client.py").write_text('WHOSE = "the project\'s own client.py"\n')
    (project / "services" / "__init__.py").write_text('WHOSE = "the project\'s own services"\n')
    return Installed(wheel, venv, project)


def test_wheel_holds_one_import_name_with_its_stubs_and_markers(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith((".dist-info", ".data"))} == {"agent_infra"}
    assert "agent_infra/py.typed" in names
    # read at run time by lazy_loader.attach_stub, and by type checkers
    assert "agent_infra/client/__init__.pyi" in names
    stubs = sorted(path.name for path in (REPO / "services" / "wire").glob("*.pyi"))
    assert stubs, "services/wire holds no .pyi stubs"
    missing = [stub for stub in stubs if f"agent_infra/wire/{stub}" not in names]
    assert missing == [], f"wire stubs missing from the wheel: {missing}"
    # The web console's templates and static files are served from the package itself.
    console = REPO / "services" / "orchestrator" / "console"
    assets = sorted(f"agent_infra/orchestrator/console/{path.relative_to(console)}"
                    for folder in ("templates", "static") for path in (console / folder).iterdir()
                    if path.is_file())
    assert assets, "the console ships no templates or static files"
    assert sorted(set(assets) - names) == [], "console assets missing from the wheel"
    # Every module of the checkout is in the wheel, where the mapping says it goes.
    expected = set()
    for package in PACKAGES:
        for module in source_dir(package).glob("*.py"):
            expected.add("/".join((*package.split("."), module.name)))
    assert sorted(expected - names) == []


def test_wheel_imports_from_a_project_with_its_own_client_and_services(
        installed: Installed) -> None:
    check = f"""
import importlib, sys
from pathlib import Path

import agent_infra
from agent_infra import AgentInfra
from agent_infra.client import EnvManagerClient, OrchestratorClient

venv = Path({str(installed.venv)!r}).resolve()
assert venv in Path(agent_infra.__file__).resolve().parents, agent_infra.__file__
assert AgentInfra.__module__ == "agent_infra.client.infra", AgentInfra.__module__
for package in {PACKAGES!r}:
    module = importlib.import_module(package)
    assert venv in Path(module.__file__).resolve().parents, (package, module.__file__)
assert set(agent_infra.client.__all__) >= {{"AgentInfra", "EnvManagerClient", "TaskStatus"}}

import client
import services
assert client.WHOSE == "the project's own client.py", client.__file__
assert services.WHOSE == "the project's own services", services.__file__
print("ok")
"""
    done = installed.run(installed.python, "-c", check)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok")


def test_daemon_loads_only_the_client_it_uses(installed: Installed) -> None:
    """agent_infra.client's exports load on first use: the orchestrator imports EnvManagerClient
    through it, and must not pay for AgentInfra, the launcher or the CLI at start-up."""
    check = """
import sys
import agent_infra.orchestrator.main
assert "agent_infra.client.env_manager" in sys.modules
heavy = [name for name in sys.modules if name.startswith(("agent_infra.client.infra",
         "agent_infra.client._launcher", "agent_infra.client.shared", "agent_infra.client.cli"))]
assert heavy == [], heavy
print("ok")
"""
    done = installed.run(installed.python, "-c", check)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_from_the_wheel_runs(installed: Installed, script: str) -> None:
    done = installed.run(installed.venv / "bin" / script, "--help")
    assert done.returncode == 0, f"{script} --help exited {done.returncode}:\n{done.stderr}"
    assert "usage" in done.stdout.lower()


# --- install paths a Python user takes: `python -m build`, then pip with no index ---------------
#
# Everything below runs offline once the wheelhouse exists: scripts/wheelhouse.py keeps a wheel
# of every dependency and of the build backend under .state/wheelhouse/ (built from PyPI once
# per dependency list and Python; scripts/build_image.sh uses the same one). `python -m build`
# takes its isolated build environment from it, and each install is `pip install --no-index
# --find-links WHEELHOUSE` into a fresh venv with nothing else on its path.

VERSION: str = PYPROJECT["project"]["version"]


def offline_env(wheelhouse: Path) -> dict[str, str]:
    """The environment of an offline pip: no index, only the wheelhouse; nothing of the
    caller's pip or Python settings (PIP_FIND_LINKS, PIP_INDEX_URL, PYTHONPATH...)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse), PIP_CONFIG_FILE=os.devnull,
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    return env


def run_offline(*argv: str | Path, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([str(arg) for arg in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=STEP_TIMEOUT_S, check=False,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Dists:
    root: Path
    wheelhouse: Path
    sdist: Path
    wheel: Path

    def fresh_venv(self, name: str) -> Path:
        # Without pip of its own (ensurepip takes seconds): this venv's pip installs into it.
        venv = self.root / name
        run_checked(sys.executable, "-m", "venv", "--without-pip", venv, cwd=self.root)
        return venv

    def pip_install(self, venv: Path, what: Path) -> None:
        # --no-compile: byte-compiling every dependency is most of an install's time here.
        run_offline(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
                    "-q", "--no-compile", "--no-index", "--find-links", self.wheelhouse, what,
                    env=offline_env(self.wheelhouse), cwd=self.root)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    house = ensure_wheelhouse()
    root = tmp_path_factory.mktemp("build")
    source = copy_sources(root / "source")
    dist = root / "dist"
    # sdist first, then the wheel built from the unpacked sdist: a file the sdist misses fails.
    run_offline(sys.executable, "-m", "build", "--outdir", dist, source,
                env=offline_env(house), cwd=root)
    (sdist,) = dist.glob("agent_infra-*.tar.gz")
    (wheel,) = dist.glob("agent_infra-*.whl")
    return Dists(root, house, sdist, wheel)


def test_python_m_build_makes_an_sdist_and_a_wheel(dists: Dists) -> None:
    assert dists.sdist.name == f"agent_infra-{VERSION}.tar.gz"
    assert dists.wheel.name == f"agent_infra-{VERSION}-py3-none-any.whl"
    with tarfile.open(dists.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= names
    # Every module and stub of the sources it was built from (a copy: the checkout may change).
    source = dists.root / "source"
    for package in PACKAGES:
        directory = source_dir(package).relative_to(REPO)
        for module in (source / directory).glob("*.py*"):
            assert f"{directory}/{module.name}" in names, module
    assert "client/__init__.pyi" in names


def test_wheel_installs_offline_from_the_wheelhouse_and_its_scripts_run(dists: Dists) -> None:
    venv = dists.fresh_venv("venv-wheel")
    dists.pip_install(venv, dists.wheel)
    env = offline_env(dists.wheelhouse)
    run_offline(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "check",
                env=env, cwd=dists.root)
    for script in SCRIPTS:
        out = run_offline(venv / "bin" / script, "--version", env=env, cwd=dists.root)
        assert out.strip() == f"{script} {VERSION}", out
        out = run_offline(venv / "bin" / script, "--help", env=env, cwd=dists.root)
        assert out.lower().startswith("usage"), out
        if script == "env-manager":
            assert "--config" in out and "ENV_MANAGER_CONFIG" in out


def test_sdist_installs_offline_from_the_wheelhouse(dists: Dists) -> None:
    """The sdist builds with the backend from the wheelhouse (setuptools, wheel) and installs."""
    venv = dists.fresh_venv("venv-sdist")
    dists.pip_install(venv, dists.sdist)
    out = run_offline(venv / "bin" / "env-manager", "--version",
                      env=offline_env(dists.wheelhouse), cwd=dists.root)
    assert out.strip() == f"env-manager {VERSION}"
