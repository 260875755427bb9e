"""The project and every dependency as wheels for one target Python, so a
host installs with `pip install --no-index` and needs no package registry.

How a wheelhouse is made (build_wheelhouse), with this machine's pip:
1. the project's wheel, built from a copy of the source tree (the working
   tree gets no build/ or egg-info litter);
2. the dependency versions: pip resolves the project's requirements,
   preferring the versions installed here (those the tests ran with);
3. those exact versions downloaded for the target's Python and platform
   (binary wheels where they exist: a Mac can build an AMI's wheelhouse);
4. the few dependencies published only as source built into wheels here;
   they must be pure Python, or the target could not use them.

Step 2 evaluates environment markers for this machine's Python; a
dependency that only another Python version needs would be missed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from provisioning.errors import ProvisioningError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_NAME = "media-nommer"
# Not part of the project's wheel; everything else of the tree is copied.
_SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "var", "build", "dist", "*.egg-info", "__pycache__",
    ".pytest_cache", "*.pyc", "tests", "bench", "docs", "packer", "*.whl")
# Lowest glibc that manylinux wheels name (manylinux1 = glibc 2.5).
_OLDEST_GLIBC_MINOR = 5
_PIP_TIMEOUT_S = 900

# Run on a host with its Python (`python -c PROBE_CODE`): what a wheelhouse
# for it must match. Importing venv and ensurepip fails early where Debian's
# python3-venv is missing.
PROBE_CODE = (
    "import json, platform, sys, venv, ensurepip; "
    "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], "
    "'implementation': sys.implementation.name, 'machine': platform.machine(), "
    "'libc': list(platform.libc_ver()), 'executable': sys.executable}))")


@dataclasses.dataclass(frozen=True)
class Target:
    """A CPython on Linux with glibc: what binary wheels must be built for."""

    python: str                 # "3.11"
    machine: str                # "x86_64", "aarch64"
    glibc: tuple[int, int]      # (2, 36)
    executable: str = "python3"

    @classmethod
    def from_probe(cls, answer: dict) -> "Target":
        """The Target PROBE_CODE's output describes. Raises ProvisioningError
        for a Python the wheelhouse cannot serve."""
        if answer.get("implementation") != "cpython":
            raise ProvisioningError(f"the host's Python is {answer.get('implementation')}; "
                                    "a CPython 3.11 or newer is needed")
        libc, version = (list(answer.get("libc") or []) + ["", ""])[:2]
        if libc != "glibc" or version.count(".") < 1:
            raise ProvisioningError(f"the host's C library is {libc or 'unknown'}; "
                                    "manylinux wheels need glibc")
        major, minor = (int(part) for part in version.split(".")[:2])
        return cls(answer["python"], answer["machine"], (major, minor),
                   answer.get("executable") or "python3")

    def platforms(self) -> list[str]:
        """Every manylinux platform tag this target can run, newest first."""
        major, newest = self.glibc
        tags = [f"manylinux_{major}_{minor}_{self.machine}"
                for minor in range(newest, _OLDEST_GLIBC_MINOR - 1, -1)]
        # The legacy aliases of glibc 2.17, 2.12 and 2.5.
        aliases = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{alias}_{self.machine}" for minor, alias in aliases.items()
                 if newest >= minor]
        return tags

    def pip_arguments(self) -> list[str]:
        abi = "cp" + self.python.replace(".", "")
        arguments = ["--python-version", self.python, "--implementation", "cp", "--abi", abi]
        for platform in self.platforms():
            arguments += ["--platform", platform]
        return arguments


# The encoder AMI's base (packer/encoder.pkr.hcl): Debian 12 on x86_64, whose
# python3 is 3.11 and whose glibc is 2.36.
ENCODER_TARGET = Target(python="3.11", machine="x86_64", glibc=(2, 36))


def _pip(*arguments: str, cwd: Path | None = None) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments]
    try:
        subprocess.run(command, check=True, cwd=cwd, timeout=_PIP_TIMEOUT_S,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    except subprocess.CalledProcessError as exc:
        tail = "\n".join(exc.stdout.strip().splitlines()[-15:])
        raise ProvisioningError(f"pip {arguments[0]} failed:\n{tail}") from None
    except subprocess.TimeoutExpired:
        raise ProvisioningError(f"pip {arguments[0]} did not finish in {_PIP_TIMEOUT_S} s") from None


def build_project_wheel(dest: Path, work: Path, project_dir: Path = PROJECT_ROOT) -> Path:
    """The project's wheel, built from a copy of `project_dir`, into `dest`."""
    source = work / "source"
    shutil.copytree(project_dir, source, ignore=_SOURCE_IGNORE)
    _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(source))
    wheels = sorted(dest.glob("media_nommer-*.whl"))
    if len(wheels) != 1:
        raise ProvisioningError(f"expected one media-nommer wheel in {dest}, found {len(wheels)}")
    return wheels[0]


def installed_versions() -> list[str]:
    """`name==version` of every distribution installed with this Python, the
    project itself left out: the versions the project was tested with."""
    pins = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower().replace("_", "-") != PROJECT_NAME:
            pins.add(f"{name}=={dist.version}")
    return sorted(pins)


def resolve_dependencies(project_wheel: Path, work: Path) -> list[str]:
    """`name==version` of every dependency the project's wheel needs."""
    constraints = work / "constraints.txt"
    constraints.write_text("\n".join(installed_versions()) + "\n")
    report = work / "resolution.json"
    _pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report),
         "--constraint", str(constraints), str(project_wheel))
    chosen = json.loads(report.read_text())["install"]
    return sorted(f"{item['metadata']['name']}=={item['metadata']['version']}"
                  for item in chosen
                  if item["metadata"]["name"].lower().replace("_", "-") != PROJECT_NAME)


def fetch_for_target(pins: list[str], target: Target, dest: Path, work: Path) -> None:
    """Wheels of exactly `pins` for `target` into `dest`."""
    requirements = work / "pins.txt"
    requirements.write_text("\n".join(pins) + "\n")
    downloads = work / "downloads"
    # --no-deps: the pins are the whole closure already, and pip allows
    # source distributions next to --platform only without dependencies.
    _pip("download", "--quiet", "--no-deps", "--prefer-binary", "--dest", str(downloads),
         *target.pip_arguments(), "--requirement", str(requirements))
    for item in sorted(downloads.iterdir()):
        if item.name.endswith(".whl"):
            shutil.copy2(item, dest / item.name)
            continue
        built = work / "built"
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), str(item))
        for wheel in built.glob("*.whl"):
            if not wheel.name.endswith("-none-any.whl"):
                raise ProvisioningError(
                    f"{item.name} has no wheel for Python {target.python} on {target.machine} "
                    "and builds into a binary one here; build the wheelhouse on a machine "
                    "like the target")
            shutil.move(str(wheel), dest / wheel.name)


def build_wheelhouse(dest: Path, target: Target, project_dir: Path = PROJECT_ROOT) -> Path:
    """A wheelhouse for `target` in `dest` (made if missing; old wheels there
    are removed). Returns `dest`. Raises ProvisioningError when pip fails."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as scratch:
        work = Path(scratch)
        project_wheel = build_project_wheel(dest, work, project_dir)
        fetch_for_target(resolve_dependencies(project_wheel, work), target, dest, work)
    return dest


def project_version(wheelhouse: Path) -> str:
    """The media-nommer version in `wheelhouse`. Raises ProvisioningError
    when the folder has no (or more than one) media-nommer wheel."""
    wheels = sorted(Path(wheelhouse).glob("media_nommer-*.whl"))
    if len(wheels) != 1:
        raise ProvisioningError(f"{wheelhouse} should hold one media-nommer wheel, "
                                f"it holds {len(wheels)}")
    return wheels[0].name.split("-")[1]


def release_id(wheelhouse: Path) -> str:
    """`<version>-<digest>`: the same wheels give the same id. The digest
    covers each wheel's name and the file hashes in its RECORD, not the zip
    bytes, which change with file times on every rebuild of the project."""
    digest = hashlib.sha256()
    for wheel in sorted(Path(wheelhouse).glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            records = [name for name in archive.namelist() if name.endswith(".dist-info/RECORD")]
            if len(records) != 1:
                raise ProvisioningError(f"{wheel.name} is not a wheel (no RECORD)")
            lines = archive.read(records[0]).decode("utf-8").splitlines()
        digest.update(wheel.name.encode() + b"\0")
        digest.update("\n".join(sorted(lines)).encode() + b"\0")
    return f"{project_version(wheelhouse)}-{digest.hexdigest()[:12]}"
