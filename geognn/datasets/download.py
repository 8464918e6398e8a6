"""Get QM9 and OC20 onto disk: a resumable downloader, checksums, safe extraction, and the
dataset recipes behind ``scripts/download_qm9.py`` and ``scripts/download_oc20.py``.

Downloading (``download``): plain ``urllib``. Bytes go to ``<name>.part`` first; if a ``.part``
is already there, the download resumes with an HTTP ``Range: bytes=<size>-`` request. A server
that answers 206 with the matching ``Content-Range`` is appended to; one that ignores Range
(200) is downloaded afresh (the ``.part`` is truncated). After the last byte the file is
checked against the ``Content-Length`` promised, then against the checksum, and only then
renamed to ``<name>``. A checksum mismatch keeps the ``.part`` (a wrong published checksum
must not cost a 3 GB download again) and says how to retry or accept it.

Checksums: each ``RemoteFile`` carries the checksum its official source publishes, and names
that source in ``checksum_source``. OC20: the MD5 column of fairchem's dataset page
(``docs/core/datasets/oc20.md``). QM9: figshare publishes an MD5 per file through its API,
which could not be consulted when this was written (no network); the SHA-256 values used are
the ones TensorFlow Datasets recorded when it downloaded the same figshare files
(``tensorflow_datasets/datasets/qm9/checksums.tsv``). A checksum file in
``md5sum``/``sha256sum`` format (``<hex>  <file name>``; 32 hex digits = MD5, 64 = SHA-256)
overrides them, e.g. for a mirror that serves other archives (``read_checksum_file``).

Extraction (``extract``): ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz`` and
``.zip``, streamed member by member. Each member's path is checked before it is written:
absolute paths, ``..`` components, paths or links leading outside the destination, and device
files raise ``ExtractError`` (path-traversal guard).

Errors are one line each: ``DownloadError`` (HTTP status with the URL, unreachable host,
interrupted transfer, disk full, permission denied), ``ChecksumError`` (file name, algorithm,
expected and actual hash), ``ExtractError`` (archive and member).

Layouts written (what ``open_dataset`` then reads):

- QM9 (``download_qm9``): ``OUT/dsgdb9nsd_NNNNNN.xyz`` (133,885 files) and
  ``OUT/uncharacterized.txt``, so ``open_dataset("qm9", OUT)`` works; or, with
  ``extract_files=False``, ``OUT/dsgdb9nsd.xyz.tar.bz2`` beside ``uncharacterized.txt``.
- OC20 IS2RE (``download_oc20(split="is2re")``): fairchem's precomputed LMDBs, extracted to
  ``OUT/is2re/<subset>/<split>/data.lmdb`` (``10k``, ``100k``, ``all``; ``train``, ``val_id``,
  ...), each folder readable by ``open_dataset("oc20-is2re", folder)``.
- OC20 S2EF train/val (``download_oc20(split="s2ef_train_200K")``, ...): the official tarballs
  hold ``*.extxyz.xz`` trajectories and ``*.txt.xz`` logs (``random<sid>,frame<fid>,<reference
  energy>`` per frame), not LMDBs. ``s2ef_to_lmdb`` converts them with geognn's own writer
  (``geognn.datasets.oc20.write_lmdb_data``) into ``OUT/s2ef/<split>/data.NNNN.lmdb``, one
  shard per trajectory file, for ``open_dataset("oc20-s2ef", folder)``. It follows fairchem's
  ``preprocess_ef.py`` (sid and fid from the log; with ``reference=True``, the default, the
  log's reference energy is subtracted so ``y`` is the adsorption energy that OC20's S2EF
  metrics use) but stores no edges. The archive layout comes from fairchem's
  ``download_data.py``; it was tested on small archives built to that layout, not on a real
  OC20 tarball.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import lzma
import os
import re
import shlex
import shutil
import stat
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: Bytes read per network / disk operation.
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed (HTTP error, unreachable host, interrupted, disk full, no permission)."""


class ChecksumError(DownloadError):
    """A file's checksum differs from the published one."""


class ExtractError(RuntimeError):
    """An archive cannot be extracted safely (bad member path, link out of the folder, corrupt)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name on disk (and on a mirror), official URL and checksum.

    ``md5`` / ``sha256``: lowercase hex, or None when no checksum is published (then nothing is
    verified and ``checksum_source`` says so).
    """

    name: str
    url: str
    md5: str | None = None
    sha256: str | None = None
    checksum_source: str = ""

    def expected(self) -> dict[str, str]:
        """``{algorithm: hex}`` of the checksums to verify."""
        return {k: v for k, v in (("md5", self.md5), ("sha256", self.sha256)) if v}


# --------------------------------------------------------------------------- sources
_TFDS = "TensorFlow Datasets' record of the figshare download (tensorflow_datasets/datasets/qm9/checksums.tsv)"

#: QM9 (Ramakrishnan et al., Sci. Data 1, 140022 (2014)), figshare collection 978904.
QM9_FILES: dict[str, RemoteFile] = {
    "dsgdb9nsd.xyz.tar.bz2": RemoteFile(
        "dsgdb9nsd.xyz.tar.bz2",
        "https://ndownloader.figshare.com/files/3195389",
        sha256="3a63848ac80691bdb8d41834b575afad345b9300d7a2db0c38adb7f6eaa8360c",  # 86,144,227 bytes
        checksum_source=_TFDS,
    ),
    "uncharacterized.txt": RemoteFile(
        "uncharacterized.txt",
        "https://ndownloader.figshare.com/files/3195404",
        sha256="3aa5115d540b356de94791d4a74c3bf1ed91c469ecf52a4f5d7cc0506fe02e24",  # 486,752 bytes
        checksum_source=_TFDS,
    ),
}

_OC20_BASE = "https://dl.fbaipublicfiles.com/opencatalystproject/data/"
_FAIRCHEM = "fairchem docs/core/datasets/oc20.md (MD5 column)"


def _oc20(name: str, md5: str, approx: str) -> tuple[RemoteFile, str]:
    return RemoteFile(name, _OC20_BASE + name, md5=md5, checksum_source=_FAIRCHEM), approx


#: OC20 (Chanussot et al., ACS Catal. 2021) splits -> (archive, compressed size as published).
#: The MD5s of s2ef_train_2M and s2ef_train_20M are those of fairchem's current dataset page;
#: the older DATASET.md of the same repository lists the two swapped.
OC20_SPLITS: dict[str, tuple[RemoteFile, str]] = {
    "is2re": _oc20(
        "is2res_train_val_test_lmdbs.tar.gz", "cfc04dd2f87b4102ab2f607240d25fb1", "8.1 GB (97 GB extracted)"
    ),
    "s2ef_train_200K": _oc20("s2ef_train_200K.tar", "f8d0909c2623a393148435dede7d3a46", "344 MB"),
    "s2ef_train_2M": _oc20("s2ef_train_2M.tar", "953474cb93f0b08cdc523399f03f7c36", "3.4 GB"),
    "s2ef_train_20M": _oc20("s2ef_train_20M.tar", "863bc983245ffc0285305a1850e19cf7", "34 GB"),
    "s2ef_train_all": _oc20("s2ef_train_all.tar", "12a7087bfd189a06ccbec9bc7add2bcd", "225 GB"),
    "s2ef_val_id": _oc20("s2ef_val_id.tar", "f57f7f5c1302637940f2cc858e789410", "1.7 GB"),
    "s2ef_val_ood_ads": _oc20("s2ef_val_ood_ads.tar", "431ab0d7557a4639605ba8b67793f053", "1.7 GB"),
    "s2ef_val_ood_cat": _oc20("s2ef_val_ood_cat.tar", "532d6cd1fe541a0ddb0aa0f99962b7db", "1.7 GB"),
    "s2ef_val_ood_both": _oc20("s2ef_val_ood_both.tar", "5731862978d80502bbf7017d68c2c729", "1.9 GB"),
}


def oc20_split(name: str) -> str:
    """The canonical OC20 split key for ``name`` (also fairchem's short names: ``200k``,
    ``val_id``, ...; case-insensitive). ValueError listing the valid names otherwise."""
    key = name.strip().lower()
    for canon in OC20_SPLITS:
        short = canon.removeprefix("s2ef_").removeprefix("train_")
        if key in (canon.lower(), short.lower()):
            return canon
    raise ValueError(f"unknown OC20 split {name!r}; choose one of {list(OC20_SPLITS)}")


# --------------------------------------------------------------------------- checksums
def file_hash(path: str | Path, algorithm: str = "sha256", progress: bool = False) -> str:
    """Hex digest of a file (``"md5"`` or ``"sha256"``), read in 1 MiB chunks."""
    path = Path(path)
    digest = hashlib.new(algorithm)
    bar = _bar(path.stat().st_size, 0, f"{algorithm} {path.name}", progress)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    bar.close()
    return digest.hexdigest()


def verify_checksum(
    path: str | Path, expected: dict[str, str], *, name: str | None = None, progress: bool = False
) -> None:
    """Raise ``ChecksumError`` unless ``path`` has every ``{algorithm: hex}`` of ``expected``."""
    path = Path(path)
    for algorithm, want in expected.items():
        got = file_hash(path, algorithm, progress)
        if got != want.lower():
            raise ChecksumError(
                f"checksum mismatch for {name or path.name}: expected {algorithm} {want.lower()}, got {got}"
            )


def read_checksum_file(path: str | Path) -> dict[str, dict[str, str]]:
    """``{file name: {algorithm: hex}}`` from an ``md5sum``/``sha256sum``-style file.

    Lines are ``<hex> <name>`` (a ``*`` before the name, as ``sha256sum -b`` writes, is
    allowed); 32 hex digits are MD5, 64 SHA-256; blank lines and ``#`` comments are skipped.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DownloadError(f"cannot read checksum file {path}: {exc.strerror or exc}") from None
    table: dict[str, dict[str, str]] = {}
    for k, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]+)\s+\*?(\S.*)", line)
        algorithm = {32: "md5", 64: "sha256"}.get(len(m.group(1))) if m else None
        if algorithm is None:
            raise ValueError(f"{path}:{k}: expected '<md5 or sha256 hex>  <file name>', got {line!r}")
        table.setdefault(PurePosixPath(m.group(2).strip()).name, {})[algorithm] = m.group(1).lower()
    return table


# --------------------------------------------------------------------------- download
def _bar(total, initial, desc, progress):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
        leave=False,
        mininterval=0.5,
    )


def _user_agent() -> str:
    from .. import __version__

    return f"geognn/{__version__} (python-urllib)"


def _disk_error(exc: OSError, path: Path) -> DownloadError:
    if exc.errno == errno.ENOSPC:
        return DownloadError(f"no space left on the device writing {path}")
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DownloadError(f"permission denied writing {path}")
    return DownloadError(f"cannot write {path}: {exc.strerror or exc}")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range: bytes a-b/N`` header (None where absent)."""
    m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", header or "")
    if m is None:
        m2 = re.match(r"bytes\s+\*/(\d+)", header or "")
        return (None, int(m2.group(1))) if m2 else (None, None)
    return int(m.group(1)), (None if m.group(2) == "*" else int(m.group(2)))


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def download(
    url: str,
    dest: str | Path,
    *,
    expected: dict[str, str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest + ".part"`` if present; returns ``dest``.

    ``expected``: ``{algorithm: hex}`` checksums verified before the ``.part`` is renamed (None
    or empty: not verified). An existing ``dest`` is verified and kept (no request is made).
    ``timeout``: seconds without data before giving up (then run again to resume).
    ``log``: where one-line notes go (resuming, server ignored Range), None for silence.
    Raises ``DownloadError`` / ``ChecksumError`` with one-line messages.
    """
    dest = Path(dest)
    say = log or (lambda message: None)
    expected = expected or {}
    if dest.is_file():
        if expected:
            try:
                verify_checksum(dest, expected, progress=progress)
            except ChecksumError as exc:
                raise ChecksumError(f"{exc} (an earlier download; delete {dest} to fetch it again)") from None
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, dest.parent) from None
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # Range Not Satisfiable: the .part may already be whole
            _, total = _content_range(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset:
                response = None
            else:
                say(f"{part.name}: the server refused to resume at byte {offset}; downloading afresh")
                offset = 0
                response = _request(url, 0, timeout)
        else:
            exc.close()
            raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None

    if response is not None:
        with response:
            total = None
            status = response.status
            if offset and status == 206:
                first, total = _content_range(response.headers.get("Content-Range"))
                if first != offset:
                    raise DownloadError(
                        f"the server at {url} resumed at byte {first}, not {offset}; delete {part} and run again"
                    )
                say(f"resuming {dest.name} at {offset:,} bytes")
            else:
                if offset:
                    say(f"{url} ignores HTTP Range requests; downloading {dest.name} afresh")
                offset = 0
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if total is not None:
                free = shutil.disk_usage(dest.parent).free
                if total - offset > free:
                    raise DownloadError(
                        f"not enough disk space in {dest.parent}: {dest.name} needs "
                        f"{(total - offset) / 1e9:.2f} GB more, {free / 1e9:.2f} GB free"
                    )
            _stream(response, part, offset, total, url, progress)
    if expected:
        try:
            verify_checksum(part, expected, name=dest.name, progress=progress)
        except ChecksumError as exc:
            raise ChecksumError(
                f"{exc}; kept as {part} (delete it to download again, or pass --skip-checksum to accept it)"
            ) from None
    try:
        os.replace(part, dest)
    except OSError as exc:
        raise _disk_error(exc, dest) from None
    return dest


def _request(url, offset, timeout):
    try:
        return _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def _stream(response, part: Path, offset: int, total: int | None, url: str, progress: bool) -> None:
    """Append (offset > 0) or write the response body to ``part``; check the promised length."""
    written = offset
    bar = _bar(total, offset, part.name.removesuffix(".part"), progress)
    try:
        with open(part, "ab" if offset else "wb") as fh:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, ValueError, http.client.HTTPException) as exc:  # timeout, reset, IncompleteRead
                    raise DownloadError(
                        f"download of {url} interrupted at {written:,} bytes "
                        f"({type(exc).__name__}: {exc}); run again to resume"
                    ) from None
                if not chunk:
                    break
                fh.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    except OSError as exc:  # opening or writing the .part (disk full, permission)
        raise _disk_error(exc, part) from None
    finally:
        bar.close()
    if total is not None and written != total:
        raise DownloadError(f"download of {url} stopped at {written:,} of {total:,} bytes; run again to resume")


def fetch(
    remote: RemoteFile,
    out_dir: str | Path,
    *,
    mirror: str | None = None,
    skip_checksum: bool = False,
    checksums: dict[str, dict[str, str]] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Download one ``RemoteFile`` into ``out_dir`` (see ``download``); returns its path.

    ``mirror``: base URL serving the same file names (``<mirror>/<name>``), e.g. a local copy or
    a test server. ``checksums``: ``read_checksum_file`` table overriding the built-in checksum
    of any file it names. ``skip_checksum``: verify nothing.
    """
    url = mirror.rstrip("/") + "/" + remote.name if mirror else remote.url
    expected = {} if skip_checksum else (checksums or {}).get(remote.name, remote.expected())
    if not skip_checksum and not expected and log:
        log(f"note: no published checksum for {remote.name}; it is not verified")
    return download(url, Path(out_dir) / remote.name, expected=expected, progress=progress, log=log)


# --------------------------------------------------------------------------- extraction
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _safe_relpath(name: str, archive: Path) -> PurePosixPath:
    """The member path as a relative path with no ``..``; ExtractError for anything else."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise ExtractError(f"{archive}: unsafe member path {name!r} (absolute or with '..'); refusing to extract")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _inside(root: Path, target: Path) -> bool:
    root, target = os.path.realpath(root), os.path.realpath(target)
    return target == root or target.startswith(root + os.sep)


def extract(
    archive: str | Path, dest: str | Path, *, rename: Callable[[str], str | None] | None = None, progress: bool = True
) -> list[Path]:
    """Extract a .tar[.gz|.bz2|.xz] or .zip ``archive`` into ``dest`` (created); returns the files.

    ``rename(member_path) -> relative output path | None`` places (or, with None, skips) each
    file; default: its own path. Member paths are checked first (``ExtractError`` for absolute
    paths, ``..``, links out of ``dest``, devices); regular files and directories are written,
    symbolic links only when they stay inside ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, dest) from None
    written: list[Path] = []

    def target_of(name: str) -> Path | None:
        rel = _safe_relpath(name, archive)
        new = rename(str(rel)) if rename else str(rel)
        if new is None:
            return None
        out = dest / _safe_relpath(new, archive)
        if not _inside(dest, out):
            raise ExtractError(f"{archive}: member {name!r} would be written outside {dest}; refusing to extract")
        return out

    def write(out: Path, fileobj) -> None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            if not _inside(dest, out):  # a symlinked folder inside dest pointing out
                raise ExtractError(f"{archive}: {out} leads outside {dest} through a link; refusing to extract")
            with open(out, "wb") as fh:
                shutil.copyfileobj(fileobj, fh, CHUNK)
        except OSError as exc:
            raise _disk_error(exc, out) from None
        written.append(out)

    name = archive.name.lower()
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"extracting {archive.name}", unit=" files", disable=not progress, leave=False, mininterval=0.5)
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    out = target_of(info.filename)
                    if out is None:
                        continue
                    if info.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                    elif stat.S_ISLNK(mode):
                        raise ExtractError(
                            f"{archive}: member {info.filename!r} is a symbolic link; refusing to extract"
                        )
                    else:
                        with zf.open(info) as src:
                            write(out, src)
                        bar.update(1)
        elif name.endswith(_TAR_SUFFIXES):
            with tarfile.open(archive, "r|*") as tar:  # streamed: one pass, no seeking in .gz/.bz2
                for member in tar:
                    out = target_of(member.name)
                    if out is None:
                        continue
                    if member.isdir():
                        out.mkdir(parents=True, exist_ok=True)
                    elif member.isfile():
                        write(out, tar.extractfile(member))
                        bar.update(1)
                    elif member.issym() or member.islnk():
                        base = out.parent if member.issym() else dest
                        link_target = base / member.linkname
                        if PurePosixPath(member.linkname).is_absolute() or not _inside(dest, link_target):
                            raise ExtractError(
                                f"{archive}: link {member.name!r} -> {member.linkname!r} points "
                                f"outside {dest}; refusing to extract"
                            )
                        out.parent.mkdir(parents=True, exist_ok=True)
                        if member.issym():
                            if out.is_symlink() or out.exists():
                                out.unlink()
                            os.symlink(member.linkname, out)
                        else:
                            shutil.copyfile(link_target, out)
                        written.append(out)
                    else:
                        raise ExtractError(
                            f"{archive}: member {member.name!r} is a device or pipe; refusing to extract"
                        )
        else:
            raise ExtractError(f"{archive}: unknown archive type (expected .zip or one of {list(_TAR_SUFFIXES)})")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise ExtractError(f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not archive.exists():
            raise ExtractError(f"{archive}: no such archive") from None
        raise ExtractError(f"{archive}: cannot read ({exc.strerror or exc})") from None
    finally:
        bar.close()
    return written


# --------------------------------------------------------------------------- QM9
_QM9_XYZ = re.compile(r"(?:^|/)(dsgdb9nsd_\d+\.xyz)$")


def _marker(out: Path, archive_name: str) -> Path:
    return out / f".{archive_name}.extracted"


def download_qm9(
    out: str | Path,
    *,
    mirror: str | None = None,
    skip_checksum: bool = False,
    checksums: dict[str, dict[str, str]] | None = None,
    extract_files: bool = True,
    keep_archive: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """QM9's ``dsgdb9nsd.xyz.tar.bz2`` and ``uncharacterized.txt`` from figshare into ``out``.

    With ``extract_files`` (default) the xyz files are extracted flat into ``out`` and the
    archive removed (kept with ``keep_archive``): returns ``out``, and ``open_dataset("qm9",
    out)`` reads it. Otherwise returns the archive's path (``open_dataset`` reads the tarball
    directly and finds ``uncharacterized.txt`` beside it). Running again skips what is done.
    """
    out = Path(out)
    opts = {"mirror": mirror, "skip_checksum": skip_checksum, "checksums": checksums, "progress": progress, "log": log}
    fetch(QM9_FILES["uncharacterized.txt"], out, **opts)
    archive_name = "dsgdb9nsd.xyz.tar.bz2"
    marker = _marker(out, archive_name)
    if extract_files and marker.is_file():
        if log:
            log(f"{archive_name} already extracted in {out} ({marker.name})")
        return out
    archive = fetch(QM9_FILES[archive_name], out, **opts)
    if not extract_files:
        return archive

    def flat(name: str) -> str | None:
        m = _QM9_XYZ.search(name)
        return m.group(1) if m else None

    files = extract(archive, out, rename=flat, progress=progress)
    if not files:
        raise ExtractError(f"{archive}: no dsgdb9nsd_*.xyz members; not the QM9 archive?")
    marker.write_text(f"{len(files)} files from {archive_name}\n")
    if not keep_archive:
        archive.unlink()
    if log:
        log(f"extracted {len(files):,} QM9 xyz files into {out}")
    return out


# --------------------------------------------------------------------------- OC20
def _under(name: str, anchor: tuple[str, ...]) -> PurePosixPath | None:
    """The part of ``name`` after the first occurrence of the path components ``anchor``."""
    parts = PurePosixPath(name).parts
    for k in range(len(parts) - len(anchor) + 1):
        if parts[k : k + len(anchor)] == anchor:
            return PurePosixPath(*parts[k + len(anchor) :]) if len(parts) > k + len(anchor) else None
    return None


def _is2re_rename(subsets: Sequence[str] | None):
    """Member -> ``is2re/<subset>/<split>/...`` for the LMDB part of the IS2RE archive."""
    wanted = [PurePosixPath(s.strip("/")) for s in subsets or []]

    def rename(name: str) -> str | None:
        rel = _under(name, ("data", "is2re"))
        if rel is None:
            return None
        if wanted and not any(rel.parts[: len(w.parts)] == w.parts for w in wanted):
            return None
        return str(PurePosixPath("is2re") / rel)

    return rename


def _open_text(path: Path):
    return lzma.open(path, "rt") if path.suffix == ".xz" else open(path)


def _s2ef_pairs(src: Path) -> list[tuple[Path, Path]]:
    trajectories = sorted(p for p in src.rglob("*") if p.name.endswith((".extxyz", ".extxyz.xz")))
    pairs = []
    for traj in trajectories:
        stem = traj.name.removesuffix(".xz").removesuffix(".extxyz")
        logs = [traj.with_name(stem + ext) for ext in (".txt", ".txt.xz")]
        found = next((p for p in logs if p.is_file()), None)
        if found is None:
            raise DownloadError(f"{traj}: no frame log {stem}.txt(.xz) beside it (sid, fid, reference energy)")
        pairs.append((traj, found))
    return pairs


def s2ef_to_lmdb(src: str | Path, out: str | Path, *, reference: bool = True, progress: bool = True) -> int:
    """Convert extracted OC20 S2EF trajectories (``*.extxyz[.xz]`` + ``*.txt[.xz]``) to LMDBs.

    One shard ``out/data.NNNN.lmdb`` per trajectory file (sorted by path), in fairchem's layout
    (``geognn.datasets.oc20.write_lmdb_data``): float32 positions/cell/forces, ``tags``,
    ``fixed`` (from the frames' constraints), ``sid`` and ``fid`` from the log line
    ``random<sid>,frame<fid>,<reference energy eV>``, ``y`` = DFT energy (eV) minus the
    reference energy when ``reference`` (the adsorption energy; fairchem's ``--ref-energy``),
    ``force`` (eV/Å, as stored: fixed atoms keep their DFT forces, as in fairchem). Shards already written are kept (a rerun resumes). Returns frames written.
    """
    import ase.io

    from .oc20 import atoms_to_data, write_lmdb_data

    src, out = Path(src), Path(out)
    pairs = _s2ef_pairs(src)
    if not pairs:
        raise DownloadError(f"{src}: no *.extxyz or *.extxyz.xz trajectories found (not an S2EF archive?)")
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    total = 0
    for k, (traj, log_path) in enumerate(
        tqdm(pairs, desc=f"S2EF -> LMDB {out.name}", unit=" files", disable=not progress, leave=False)
    ):
        shard = out / f"data.{k:04d}.lmdb"
        if shard.is_file():
            continue
        with _open_text(log_path) as fh:
            lines = [line.strip() for line in fh if line.strip()]

        def items(traj=traj, lines=lines, log_path=log_path):
            n = 0
            with _open_text(traj) as fh:
                for i, atoms in enumerate(ase.io.iread(fh, index=":", format="extxyz")):
                    n = i + 1
                    if i >= len(lines):
                        raise DownloadError(f"{traj}: more frames than lines in {log_path.name} ({len(lines)})")
                    fields = lines[i].split(",")
                    try:
                        sid = int(fields[0].removeprefix("random"))
                        fid = int(fields[1].removeprefix("frame"))
                        ref = float(fields[2])
                        # raw DFT values: ASE's default would zero the forces on fixed atoms
                        energy = atoms.get_potential_energy(apply_constraint=False)
                        forces = atoms.get_forces(apply_constraint=False)
                    except (IndexError, ValueError) as exc:
                        raise DownloadError(
                            f"{log_path.name} line {i + 1}: expected 'random<sid>,frame<fid>,"
                            f"<reference energy>', got {lines[i]!r} ({exc})"
                        ) from None
                    except RuntimeError as exc:  # no calculator: frame lacks energy/forces
                        raise DownloadError(f"{traj} frame {i}: no energy/forces ({exc})") from None
                    atoms.info.update(sid=sid, fid=fid, energy=energy - ref if reference else energy)
                    atoms.arrays["forces"] = forces
                    atoms.calc = None
                    yield atoms_to_data(atoms, i, task="s2ef")
                if n != len(lines):
                    raise DownloadError(f"{traj}: {n} frames but {len(lines)} lines in {log_path.name}")

        tmp = shard.with_name(shard.name + ".tmp")
        if tmp.exists():
            tmp.unlink()
        try:
            total += write_lmdb_data(tmp, items())
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise
        os.replace(tmp, shard)
    return total


def download_oc20(
    split: str,
    out: str | Path,
    *,
    mirror: str | None = None,
    skip_checksum: bool = False,
    checksums: dict[str, dict[str, str]] | None = None,
    keep_archive: bool = False,
    subsets: Sequence[str] | None = None,
    reference: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Download one OC20 split (``OC20_SPLITS``) into ``out`` and lay it out for ``open_dataset``.

    ``is2re``: returns ``out/is2re`` (``<subset>/<split>/data.lmdb``; ``subsets`` such as
    ``["10k/train", "all/val_id"]`` extracts only those). S2EF train/val: returns
    ``out/s2ef/<split without "s2ef_">`` holding the converted LMDB shards (``s2ef_to_lmdb``,
    ``reference`` as there). The archive (and, for S2EF, the extracted trajectories) are removed
    afterwards unless ``keep_archive``. Running again skips what is done and resumes a partial
    download.
    """
    split = oc20_split(split)
    out = Path(out)
    remote, _ = OC20_SPLITS[split]
    marker = _marker(out, remote.name)
    target = out / "is2re" if split == "is2re" else out / "s2ef" / split.removeprefix("s2ef_")
    if marker.is_file():
        if log:
            log(f"{remote.name} already prepared in {target} ({marker.name})")
        return target
    archive = fetch(
        remote, out, mirror=mirror, skip_checksum=skip_checksum, checksums=checksums, progress=progress, log=log
    )
    if split == "is2re":
        files = extract(archive, out, rename=_is2re_rename(subsets), progress=progress)
        if not files:
            raise ExtractError(f"{archive}: no data/is2re/... members" + (f" under {list(subsets)}" if subsets else ""))
    else:
        raw = out / (remote.name.removesuffix(".tar") + "_raw")
        raw_marker = _marker(raw, remote.name)
        if not raw_marker.is_file():  # a rerun after a failed conversion does not extract again
            extract(archive, raw, progress=progress)
            raw_marker.write_text("extracted\n")
        n = s2ef_to_lmdb(raw, target, reference=reference, progress=progress)
        if log:
            log(f"converted {n:,} S2EF frames into {target}")
        if not keep_archive:
            shutil.rmtree(raw)
    marker.write_text(f"{remote.name} -> {target}\n")
    if not keep_archive:
        archive.unlink()
    return target


def lmdb_folders(root: str | Path) -> list[Path]:
    """Folders under ``root`` (itself included) that directly hold ``*.lmdb`` files, sorted."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob("*.lmdb") if p.is_file()})


# --------------------------------------------------------------------------- command lines
def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder the data goes to (created)")
    parser.add_argument(
        "--mirror", metavar="URL", help="base URL serving the same file names (a mirror, or a local http.server)"
    )
    parser.add_argument(
        "--skip-checksum", action="store_true", help="do not verify checksums (for a mirror serving other archives)"
    )
    parser.add_argument(
        "--checksums",
        metavar="FILE",
        type=Path,
        help="md5sum/sha256sum-style file whose checksums override the built-in ones",
    )
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after extraction")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _run(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    try:
        args.checksum_table = read_checksum_file(args.checksums) if args.checksums else None
        return main(args)
    except (DownloadError, ExtractError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume the download", file=sys.stderr)
        return 130


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def qm9_main(argv: Sequence[str] | None = None) -> int:
    """``scripts/download_qm9.py``: see ``--help``."""
    parser = argparse.ArgumentParser(
        prog="download_qm9.py",
        description="Download QM9 (dsgdb9nsd.xyz.tar.bz2 and uncharacterized.txt, figshare collection 978904, "
        "Ramakrishnan et al., Sci. Data 2014) into --out, extract the 133,885 xyz files there, and "
        "print the `geognn train` line to use next. Resumes a partial download when run again.",
    )
    _common_args(parser)
    parser.add_argument(
        "--no-extract",
        action="store_true",
        help="keep only the tarball (geognn reads it directly; 86 MB instead of ~550 MB of files)",
    )

    def main(args) -> int:
        say = print
        result = download_qm9(
            args.out,
            mirror=args.mirror,
            skip_checksum=args.skip_checksum,
            checksums=args.checksum_table,
            extract_files=not args.no_extract,
            keep_archive=args.keep_archive,
            progress=not args.quiet,
            log=say,
        )
        print(
            f"QM9 is ready: {result}\nnext:\n  geognn train --dataset qm9 --data-root {_q(result)} --target U0 "
            f"--out runs/qm9"
        )
        return 0

    return _run(main, parser, argv)


def oc20_main(argv: Sequence[str] | None = None) -> int:
    """``scripts/download_oc20.py``: see ``--help``."""
    lines = "\n".join(f"  {k:18s} {r.name} ({size})" for k, (r, size) in OC20_SPLITS.items())
    parser = argparse.ArgumentParser(
        prog="download_oc20.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download OC20 splits (Chanussot et al. 2021, CC BY 4.0) from fairchem's download location "
        "into --out, verify their MD5, and lay them out as LMDBs that geognn reads "
        "(open_dataset('oc20-is2re' / 'oc20-s2ef', folder)); print the `geognn train` line.",
        epilog="splits (--split, repeatable; fairchem's short names such as 200k or val_id work too):\n"
        + lines
        + "\n\nIS2RE comes as precomputed LMDBs, used as they are (under OUT/is2re/<subset>/<split>/).\n"
        "S2EF train/val come as extxyz trajectories + txt logs, NOT LMDBs: geognn cannot train on that raw "
        "format\ndirectly, so this script converts them with geognn's own LMDB writer into "
        "OUT/s2ef/<split>/\n(fairchem's preprocess_ef semantics, without stored edges). "
        "The S2EF test LMDBs carry no labels and are not offered.",
    )
    _common_args(parser)
    parser.add_argument(
        "--split",
        action="append",
        required=True,
        metavar="SPLIT",
        help="split to fetch (repeatable), e.g. is2re, s2ef_train_200K, s2ef_val_id",
    )
    parser.add_argument(
        "--subset",
        action="append",
        metavar="PATH",
        help="IS2RE only: extract only these parts of data/is2re/, e.g. 10k/train, all/val_id "
        "(repeatable; default: all 97 GB)",
    )
    parser.add_argument(
        "--raw-energy",
        action="store_true",
        help="S2EF: keep the total DFT energy as y (default: subtract the per-frame reference "
        "energy, giving the adsorption energy OC20's S2EF metrics use)",
    )

    def main(args) -> int:
        splits = [oc20_split(s) for s in args.split]
        if args.subset and "is2re" not in splits:
            raise ValueError("--subset applies to --split is2re only")
        done = {}
        for split in splits:
            done[split] = download_oc20(
                split,
                args.out,
                mirror=args.mirror,
                skip_checksum=args.skip_checksum,
                checksums=args.checksum_table,
                keep_archive=args.keep_archive,
                subsets=args.subset,
                reference=not args.raw_energy,
                progress=not args.quiet,
                log=print,
            )
        print("OC20 is ready:")
        for split, path in done.items():
            for folder in lmdb_folders(path):
                print(f"  {split:18s} {folder}")
        if "is2re" in done:
            folders = lmdb_folders(done["is2re"])
            train = next((f for f in folders if f.name == "train"), folders[0] if folders else done["is2re"])
            val = next((f for f in folders if f.name == "val_id"), None)
            print(
                "next (IS2RE; configs/oc20_is2re_schnet.yaml holds the OC20 paper's SchNet baseline settings):\n"
                f"  geognn train --dataset oc20-is2re --data-root {_q(train)}"
                + (f" --val-data-root {_q(val)}" if val else "")
                + " --on-error skip --out runs/is2re"
            )
        s2ef = [s for s in done if s != "is2re"]
        if s2ef:
            train = next((done[s] for s in s2ef if "train" in s), done[s2ef[0]])
            val = next((done[s] for s in s2ef if "val" in s and done[s] != train), None)
            print(
                "next (S2EF):\n"
                f"  geognn train --dataset oc20-s2ef --data-root {_q(train)}"
                + (f" --val-data-root {_q(val)}" if val else "")
                + " --forces-weight 100 --on-error skip --out runs/s2ef"
            )
        return 0

    return _run(main, parser, argv)


__all__ = [
    "OC20_SPLITS",
    "QM9_FILES",
    "ChecksumError",
    "DownloadError",
    "ExtractError",
    "RemoteFile",
    "download",
    "download_oc20",
    "download_qm9",
    "extract",
    "fetch",
    "file_hash",
    "lmdb_folders",
    "oc20_main",
    "oc20_split",
    "qm9_main",
    "read_checksum_file",
    "s2ef_to_lmdb",
    "verify_checksum",
]
