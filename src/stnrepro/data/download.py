"""Download, verify and safely extract CUB-200-2011 (used by ``stn-data download``).

Why the care: the archive is 1.1 GB, so a broken transfer must be caught by MD5 before
anything is extracted, a half-written file must never look complete (``.part`` + rename),
and extraction must not write outside the output folder.  Every member is checked before
anything is extracted: absolute paths and ``..`` are refused, and so is every member that is
not a regular file or folder (symlinks, hardlinks, devices, fifos).  CUB contains no links,
and link targets are what Python's own ``data`` filter has got wrong (a long chain of
symlinks walks out of the folder on Pythons before the June 2025 fixes, CVE-2025-4517), so
refusing links outright keeps extraction safe whatever the running Python's tarfile does.
Extraction goes into a hidden temporary folder that is renamed into place only when
complete, so an interrupted run never leaves a half-extracted dataset.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from stnrepro.errors import DataError, one_line

if TYPE_CHECKING:
    from stnrepro.data.cub_index import CUBIndex

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
ARCHIVE_NAME = "CUB_200_2011.tgz"
DATASET_DIR = "CUB_200_2011"
_CHUNK = 1 << 20


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return one_line(exc)


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks (the archive does not fit comfortably in RAM)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Raise DataError naming the file and both digests on mismatch; never deletes the file."""
    actual = file_md5(path)
    if actual.lower() != expected.lower():
        raise DataError(
            f"{path}: MD5 mismatch: expected {expected}, got {actual} "
            f"(file left in place; re-download it, or pass --md5 {actual} if you trust it)"
        )


def download(url: str, dest: Path, *, expected_md5: str | None, progress: bool = True) -> None:
    """Stream ``url`` to ``dest`` via ``dest.part``; verify MD5 on the fly, then rename.

    A failed transfer removes its own ``.part`` file; an MD5 mismatch keeps it (named in the
    message) so a 1.1 GB download is not thrown away if the archive was merely re-published.
    """
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    received = 0
    total: int | None = None
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as f:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
                file=sys.stderr,
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: download failed ({_reason(exc)})") from None
    except BaseException:  # Ctrl-C: do not leave a partial file that looks like progress
        part.unlink(missing_ok=True)
        raise
    if total is not None and received != total:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: download incomplete ({received} of {total} bytes received)")
    actual = digest.hexdigest()
    if expected_md5 and actual.lower() != expected_md5.lower():
        raise DataError(
            f"{part}: MD5 mismatch: expected {expected_md5}, got {actual} (downloaded from "
            f"{url}; file kept: delete it, or rerun with --archive {part} --md5 {actual})"
        )
    part.replace(dest)


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "fifo"
    return f"tar member type {member.type!r}"


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse members that could write outside the output folder or are not plain data.

    Only regular files and folders pass: a name is checked for escaping (absolute path, drive
    letter, ``..``); a link is refused whatever its target, since judging targets safely is
    what tar filters have repeatedly got wrong.
    """
    name = member.name
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise DataError(
            f"{archive}: refusing to extract member {name!r} "
            "(absolute path or '..' would escape the output folder)"
        )
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"{archive}: refusing to extract member {name!r} ({_member_kind(member)}; "
            "expected only regular files and folders)"
        )


def extract_archive(archive: Path, out: Path, *, progress: bool = True) -> list[str]:
    """Safely extract ``archive`` into ``out``; returns the top-level names placed in ``out``.

    Existing top-level entries in ``out`` are never overwritten (their new copy is dropped),
    except that an existing dataset folder is an error (the caller checks for it first).
    """
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cub-extract-", dir=out))
    kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()  # every header read and checked before any write
                for member in members:
                    _check_member(archive, member)
                for member in tqdm(
                    members, desc="extracting", unit=" files", disable=not progress, file=sys.stderr
                ):
                    tar.extract(member, tmp, **kwargs)
        except DataError:
            raise
        except Exception as exc:  # TarError, OSError, EOFError, zlib.error from a bad archive
            raise DataError(f"{archive}: cannot extract ({_reason(exc)})") from None
        placed = []
        for entry in sorted(tmp.iterdir()):
            target = out / entry.name
            if target.exists() or target.is_symlink():
                if entry.name == DATASET_DIR:
                    raise DataError(f"{target}: already exists; move or delete it and rerun")
                continue
            entry.rename(target)
            placed.append(entry.name)
        return placed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_cub(
    out: str | Path,
    *,
    url: str = CUB_URL,
    md5: str | None = CUB_MD5,
    archive: str | Path | None = None,
    keep_archive: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> CUBIndex:
    """Make ``out/CUB_200_2011`` exist and validate; returns its index.

    Idempotent: a valid existing dataset folder is reused; an archive already at
    ``out/CUB_200_2011.tgz`` is reused after an MD5 check.  Only an archive this call
    downloaded is deleted afterwards (unless ``keep_archive``); a user's ``archive`` never is.
    ``md5`` empty/None skips verification.
    """
    from stnrepro.data.cub_index import CUBIndex  # lazy: keeps `--help` fast (no torch import)

    out = Path(out).expanduser().absolute()
    dataset = out / DATASET_DIR
    if dataset.exists():
        try:
            index = CUBIndex.load(dataset)
        except DataError as exc:
            raise DataError(
                f"{dataset}: already exists but is not a valid CUB folder ({exc}); "
                "move or delete it and rerun"
            ) from None
        log(f"{dataset}: already present and valid; nothing downloaded")
        return index
    out.mkdir(parents=True, exist_ok=True)

    downloaded = False
    if archive is not None:
        src = Path(archive).expanduser().absolute()
        if not src.is_file():
            raise DataError(f"--archive {src}: file not found")
        if md5:
            log(f"verifying MD5 of {src}")
            verify_md5(src, md5)
    else:
        src = out / ARCHIVE_NAME
        if src.is_file():
            log(f"reusing existing {src}")
            if md5:
                verify_md5(src, md5)
        else:
            log(f"downloading {url} -> {src}")
            download(url, src, expected_md5=md5 or None, progress=progress)
            downloaded = True

    log(f"extracting {src} -> {out}")
    placed = extract_archive(src, out, progress=progress)
    if DATASET_DIR not in placed:
        raise DataError(f"{src}: no {DATASET_DIR}/ folder inside (top level: {placed or 'empty'})")
    index = CUBIndex.load(dataset)
    if downloaded and not keep_archive:
        src.unlink()
    return index


# --------------------------------------------------------------------------- MNIST-format digits

#: ``stn-data download`` names -> torchvision dataset classes (their own URLs and MD5s).
DIGIT_DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def prepare_digits(name: str, out: Path, mirror: str | None = None, check_md5: bool = True) -> Path:
    """Download ``name``'s four idx files with torchvision's downloader; returns the folder.

    torchvision checks each file's MD5 and writes ``out/<class name>/raw`` (the ``.gz`` files
    and their extracted copies), which is what ``data.root`` takes. ``mirror`` replaces
    torchvision's mirrors with one ``http(s)://`` base URL (torchvision's downloader cannot
    read ``file://``; files already on disk need no download: point ``data.root`` at them).
    ``check_md5=False`` accepts files whose MD5 differs from the originals' (a re-compressed
    copy, e.g. Debian's ``dataset-fashion-mnist``; the data module still checks their
    contents). Any failure is one :class:`DataError` line naming the dataset.
    """
    from torchvision import datasets

    if name not in DIGIT_DATASETS:
        raise DataError(f"{name!r}: expected one of {', '.join(DIGIT_DATASETS)} or cub")
    cls = getattr(datasets, DIGIT_DATASETS[name])
    if mirror is not None:
        if not mirror.startswith(("http://", "https://")):
            raise DataError(
                f"--mirror={mirror}: expected an http(s):// URL (for files on disk, set "
                "data.root to their folder instead)"
            )
        base = mirror if mirror.endswith("/") else mirror + "/"
        cls = type(cls.__name__, (cls,), {"mirrors": [base]})  # same folder name, own mirror
    if not check_md5:  # torchvision skips the check of a file whose MD5 is None
        resources = [(file, None) for file, _ in cls.resources]
        cls = type(cls.__name__, (cls,), {"resources": resources})
    raw = Path(out) / DIGIT_DATASETS[name] / "raw"
    try:
        cls(str(out), train=True, download=True)
    except Exception as exc:  # RuntimeError listing every mirror tried, URLError, OSError
        # torchvision's message lists each mirror and its error on separate lines.
        reason = " ".join(str(exc).split())[:400] or type(exc).__name__
        raise DataError(f"{name}: download into {raw} failed: {reason}") from None
    return raw
