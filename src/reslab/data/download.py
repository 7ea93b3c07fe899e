"""Download the official CIFAR-10/100 python-version archives: MD5-verified, safely and atomically extracted.

``download_cifar("cifar10", root)`` leaves ``root/cifar-10-batches-py`` (``cifar-100-python`` for
CIFAR-100), which :func:`reslab.data.load_dataset` reads. Steps, each safe to interrupt:

1. stream the archive to a hidden temp file in ``root``, computing its MD5 on the way;
2. compare with the published MD5 (a mismatch deletes the file and raises :class:`DataError`);
3. check every member (no absolute paths, no ``..``, no links or devices, all inside the
   official folder), then extract into a hidden temp folder in ``root``;
4. rename the extracted folder into place (atomic), then delete the archive.

So ``root/<official folder>`` exists only once complete: a partial download or extraction is
never mistaken for a data set. ``RESLAB_CIFAR_MIRROR`` (a base URL) replaces the official site.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from reslab.data.progress import progress_bar
from reslab.errors import DataError

OFFICIAL_SITE = "https://www.cs.toronto.edu/~kriz/"
MIRROR_ENV = "RESLAB_CIFAR_MIRROR"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One official archive: its file name, published MD5 and the folder it extracts to."""

    filename: str
    md5: str
    folder: str


ARCHIVES = {
    "cifar10": Archive("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": Archive("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
}


def dataset_name(path: Path) -> str:
    """'cifar10' or 'cifar100' from a folder name such as ``cifar10``, ``CIFAR-100``, ``cifar_10``."""
    name = path.name.lower().replace("-", "").replace("_", "")
    for key in sorted(ARCHIVES, key=len, reverse=True):
        if name.startswith(key):
            return key
    raise DataError(f"cannot tell which data set to download into {path}: name the folder "
                    f"{' or '.join(ARCHIVES)} (e.g. data/cifar10)")


def archive_url(name: str) -> str:
    return (os.environ.get(MIRROR_ENV) or OFFICIAL_SITE).rstrip("/") + "/" + ARCHIVES[name].filename


def download_cifar(name: str, root: Path, *, url: str | None = None, md5: str | None = None,
                   progress: bool = True) -> Path:
    """Fetch, verify and extract archive ``name`` into ``root``; the extracted folder. Does nothing
    if it is already there. ``url`` and ``md5`` override the official ones (for mirrors and tests)."""
    if name not in ARCHIVES:
        raise DataError(f"no download known for {name!r}; choose one of {', '.join(ARCHIVES)}")
    archive = ARCHIVES[name]
    root = Path(root)
    target = root / archive.folder
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    url = url or archive_url(name)
    fd, part = tempfile.mkstemp(prefix=f".{archive.filename}.", suffix=".part", dir=root)
    try:
        with os.fdopen(fd, "wb") as file:
            digest = _fetch(url, file, progress)
        expected = md5 or archive.md5
        if digest != expected:
            raise DataError(f"{url} downloaded with MD5 {digest}, but {archive.filename} has MD5 {expected}: the "
                            "download is corrupt or the server sent another file. Nothing was kept; try again")
        _extract(Path(part), root, archive.folder)
    finally:
        Path(part).unlink(missing_ok=True)
    return target


def _fetch(url: str, file, progress: bool) -> str:
    """Stream ``url`` into ``file``; its MD5 (hex)."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(total, f"downloading {url}", unit="B", unit_scale=True, enabled=progress) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    file.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"could not download {url} ({reason}); check the network, or download the archive by hand "
                        "and pass its extracted folder") from None
    return digest.hexdigest()


def _extract(archive_path: Path, root: Path, folder: str) -> None:
    """Extract the tar archive, whose members must all lie in ``folder``, to ``root/folder`` atomically."""
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive_path) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, folder, archive_path)
            tar.extractall(staging, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        if not (staging / folder).is_dir():
            raise DataError(f"{archive_path.name} holds no {folder}/ folder; it is not the official archive")
        try:
            os.replace(staging / folder, root / folder)
        except OSError:
            if not (root / folder).is_dir():  # else another process extracted it first: fine
                raise
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(f"{archive_path.name} is not a readable tar.gz archive ({exc}); download it again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_member(member: tarfile.TarInfo, folder: str, archive_path: Path) -> None:
    parts = PurePosixPath(member.name).parts
    if member.name.startswith(("/", "\\")) or ".." in parts or not parts or parts[0] != folder:
        raise DataError(f"refusing to extract {archive_path.name}: member {member.name!r} lies outside {folder}/")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"refusing to extract {archive_path.name}: member {member.name!r} is a link or device")
