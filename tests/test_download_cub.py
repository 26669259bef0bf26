"""stn-data download: download via file:// URL, MD5 check, safe extraction, validation."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cub_fixture import write_tiny_cub

from stnrepro.cli.data import main as stn_data


def main(argv: list[str]) -> int:
    return stn_data(["download", *argv])


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A .tgz shaped like the official one: CUB_200_2011/ plus a top-level attributes.txt."""
    src = tmp_path / "src"
    write_tiny_cub(src / "CUB_200_2011")
    (src / "attributes.txt").write_text("1 has_bill_shape::curved\n")
    path = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "CUB_200_2011", arcname="CUB_200_2011")
        tar.add(src / "attributes.txt", arcname="attributes.txt")
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([*argv, "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") or "part" in p.name)


def test_download_verify_extract_validate(
    tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    argv = ["--out", str(out), "--url", archive.as_uri(), "--md5", md5_of(archive)]
    code, stdout, stderr = run(argv, capsys)
    assert code == 0, stderr
    assert (out / "CUB_200_2011" / "images.txt").is_file()
    assert (out / "attributes.txt").is_file()
    assert not (out / "CUB_200_2011.tgz").exists()  # downloaded archive removed by default
    assert leftovers(out) == []  # no .part, no temporary extraction folder
    assert stdout.count("\n") == 1
    assert "12 images, 3 classes, 6 train / 6 test" in stdout
    assert archive.is_file()  # the source is untouched

    code, stdout, _ = run(argv, capsys)  # idempotent: nothing to do the second time
    assert code == 0 and "12 images" in stdout


def test_keep_archive(tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    argv = ["--out", str(out), "--url", archive.as_uri(), "--md5", md5_of(archive)]
    code, _, stderr = run([*argv, "--keep-archive"], capsys)
    assert code == 0, stderr
    assert md5_of(out / "CUB_200_2011.tgz") == md5_of(archive)


def test_wrong_md5_fails_clearly(
    tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    wrong = "0" * 32
    code, stdout, stderr = run(
        ["--out", str(out), "--url", archive.as_uri(), "--md5", wrong], capsys
    )
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert f"expected {wrong}, got {md5_of(archive)}" in stderr
    assert str(out / "CUB_200_2011.tgz.part") in stderr  # names the file it checked
    assert not (out / "CUB_200_2011").exists()
    assert archive.is_file()


def test_local_archive(tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    wrong = ["--out", str(out), "--archive", str(archive), "--md5", "f" * 32]
    code, _, stderr = run(wrong, capsys)
    assert code == 2 and f"error: {archive}: MD5 mismatch" in stderr
    assert archive.is_file()  # never delete what the user owns

    ok = ["--out", str(out), "--archive", str(archive), "--md5", md5_of(archive)]
    code, stdout, stderr = run(ok, capsys)
    assert code == 0, stderr
    assert archive.is_file() and "12 images" in stdout


@pytest.mark.parametrize("evil", ["../evil.txt", "CUB_200_2011/../../evil.txt", "/tmp/evil.txt"])
def test_unsafe_member_refused(
    tmp_path: Path, archive: Path, evil: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.tgz"
    with tarfile.open(archive) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        payload = b"pwned\n"
        info = tarfile.TarInfo(evil)
        info.size = len(payload)
        dst.addfile(info, io.BytesIO(payload))
    out = tmp_path / "a" / "data"
    code, _, stderr = run(["--out", str(out), "--archive", str(bad), "--md5", ""], capsys)
    assert code == 2
    assert f"refusing to extract member {evil!r}" in stderr, stderr
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (out / "CUB_200_2011").exists()  # nothing half-extracted left in place
    assert leftovers(out) == []


def test_other_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    missing = (tmp_path / "nope.tgz").as_uri()
    code, _, stderr = run(["--out", str(out), "--url", missing], capsys)
    assert code == 2 and "download failed" in stderr and leftovers(out) == []

    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not a tar file at all" * 10)
    code, _, stderr = run(["--out", str(out), "--archive", str(junk), "--md5", ""], capsys)
    assert code == 2 and f"error: {junk}: cannot extract" in stderr

    empty = tmp_path / "empty.tgz"
    with tarfile.open(empty, "w:gz") as tar:
        info = tarfile.TarInfo("README")
        tar.addfile(info, io.BytesIO(b""))
    code, _, stderr = run(["--out", str(out), "--archive", str(empty), "--md5", ""], capsys)
    assert code == 2 and "no CUB_200_2011/ folder inside" in stderr

    (out / "CUB_200_2011").mkdir(parents=True)
    code, _, stderr = run(["--out", str(out), "--archive", str(empty), "--md5", ""], capsys)
    assert code == 2 and "already exists but is not a valid CUB folder" in stderr


def test_extracted_but_invalid_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    write_tiny_cub(src / "CUB_200_2011", bad_line=("images.txt", 2, "two x.jpg"))
    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(src / "CUB_200_2011", arcname="CUB_200_2011")
    out = tmp_path / "data"
    code, _, stderr = run(["--out", str(out), "--archive", str(bad), "--md5", ""], capsys)
    assert code == 2
    assert f"{out / 'CUB_200_2011' / 'images.txt'}:2: expected '<image_id> <path>'" in stderr


def _tiny_cub_with(tmp_path: Path, extra: Callable[[tarfile.TarFile], None]) -> Path:
    """A CUB-shaped .tgz whose valid members come first and ``extra``'s members last."""
    src = tmp_path / "src"
    write_tiny_cub(src / "CUB_200_2011")
    path = tmp_path / "bad.tgz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "CUB_200_2011", arcname="CUB_200_2011")
        extra(tar)
    return path


def _add_symlink_chain_escape(tar: tarfile.TarFile) -> None:
    """CVE-2025-4517: a chain of symlinks so long that ``os.path.realpath`` gives up resolving it.

    tarfile's ``data`` filter then judges the final link from its unresolved text and lets
    ``escape`` -> two levels above the extraction folder through; ``escape/evil.txt`` is
    written there.  On Python 3.11.7 with only the filter, evil.txt lands beside ``out``.
    """
    comp, steps, path = "d" * 247, "abcdefghijklmnop", ""
    for step in steps:
        folder = tarfile.TarInfo(f"{path}{comp}")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        link = tarfile.TarInfo(f"{path}{step}")
        link.type, link.linkname = tarfile.SYMTYPE, comp
        tar.addfile(link)
        path += comp + "/"
    deep = "/".join([*steps, "l" * 254])
    for name, target in [(deep, "/".join([".."] * len(steps))), ("escape", deep + "/../..")]:
        link = tarfile.TarInfo(name)
        link.type, link.linkname = tarfile.SYMTYPE, target
        tar.addfile(link)
    payload = b"pwned\n"
    evil = tarfile.TarInfo("escape/evil.txt")
    evil.size = len(payload)
    tar.addfile(evil, io.BytesIO(payload))


def _count_extract_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = tarfile.TarFile.extract

    def counting(self: tarfile.TarFile, member: tarfile.TarInfo | str, *args, **kwargs) -> None:
        calls.append(member if isinstance(member, str) else member.name)
        original(self, member, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", counting)
    return calls


def test_symlink_chain_escape_refused_before_extracting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stnrepro.data import download
    from stnrepro.errors import DataError

    bad = _tiny_cub_with(tmp_path, _add_symlink_chain_escape)
    calls = _count_extract_calls(monkeypatch)
    out = tmp_path / "a" / "data"
    with pytest.raises(DataError) as info:
        download.prepare_cub(out, archive=bad, md5=None, progress=False, log=lambda _: None)
    message = str(info.value)
    assert message.startswith(f"{bad}: refusing to extract member 'a' (symbolic link to 'ddd")
    assert "\n" not in message
    assert calls == []  # refused while checking, before a single member was written
    assert sorted(p.name for p in tmp_path.rglob("evil.txt")) == []
    assert list(out.iterdir()) == []


def _hardlink_inside(tar: tarfile.TarFile) -> None:
    link = tarfile.TarInfo("CUB_200_2011/copy.txt")
    link.type, link.linkname = tarfile.LNKTYPE, "CUB_200_2011/images.txt"
    tar.addfile(link)


def _hardlink_outside(tar: tarfile.TarFile) -> None:
    link = tarfile.TarInfo("CUB_200_2011/passwd")
    link.type, link.linkname = tarfile.LNKTYPE, "/etc/passwd"
    tar.addfile(link)


def _symlink_inside(tar: tarfile.TarFile) -> None:
    link = tarfile.TarInfo("CUB_200_2011/alias.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "images.txt"
    tar.addfile(link)


def _special(kind: bytes, name: str) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        tar.addfile(info)

    return add


@pytest.mark.parametrize(
    ("extra", "member", "kind"),
    [
        (_hardlink_inside, "CUB_200_2011/copy.txt", "hard link to 'CUB_200_2011/images.txt'"),
        (_hardlink_outside, "CUB_200_2011/passwd", "hard link to '/etc/passwd'"),
        (_symlink_inside, "CUB_200_2011/alias.txt", "symbolic link to 'images.txt'"),
        (_special(tarfile.FIFOTYPE, "CUB_200_2011/pipe"), "CUB_200_2011/pipe", "fifo"),
        (_special(tarfile.CHRTYPE, "CUB_200_2011/null"), "CUB_200_2011/null", "device file"),
        (_special(tarfile.BLKTYPE, "CUB_200_2011/sda"), "CUB_200_2011/sda", "device file"),
    ],
)
def test_every_non_regular_member_refused_before_extracting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: Callable[[tarfile.TarFile], None],
    member: str,
    kind: str,
) -> None:
    """Even a link whose target stays inside is refused: CUB has none, so none is needed."""
    from stnrepro.data import download
    from stnrepro.errors import DataError

    bad = _tiny_cub_with(tmp_path, extra)
    calls = _count_extract_calls(monkeypatch)
    out = tmp_path / "data"
    with pytest.raises(DataError) as info:
        download.extract_archive(bad, out, progress=False)
    assert str(info.value) == (
        f"{bad}: refusing to extract member {member!r} "
        f"({kind}; expected only regular files and folders)"
    )
    assert calls == []
    assert list(out.iterdir()) == []
