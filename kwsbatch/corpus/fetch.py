"""Download and unpack a public keyword data set: resumable, verified, extracted safely.

    fetch_dataset("speech-commands", "0.02", "data/sc")   # -> data/sc/<word>/*.wav ...

The archive is downloaded beside its destination as `<name>.part` and renamed when complete; a
dropped connection is resumed with an HTTP Range request (a few times in one run, and by the next
run after a kill), and a server that ignores Range simply sends the file again. The archive is then
checked (its size and the SHA-256 published for it, or a `--sha256` of your own) and extracted
member by member: a member that is absolute, climbs out with `..`, links outside the
destination, or is a device is refused before anything of it is written. A marker file records a
finished fetch, so running the same fetch again does nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from kwsbatch import __version__
from kwsbatch.errors import KwsError
from kwsbatch.files.atomic import atomic_write
from kwsbatch.files.audio import is_audio_path
from kwsbatch.progress import Reporter

MARKER = ".kwsbatch-fetch.json"
_CHUNK = 1 << 20


class FetchError(KwsError):
    """A data set cannot be downloaded, verified or unpacked."""


@dataclass(frozen=True)
class Archive:
    url: str
    size: int | None  # bytes, where published
    sha256: str | None


# Sizes and checksums as published: v0.02 by the TensorFlow Datasets checksum file (and the same
# SHA-256 in torchaudio's SPEECHCOMMANDS); v0.01's SHA-256 by torchaudio. v0.01's size is left
# out: the archive was repacked once, and its checksum is what matters.
ARCHIVES: dict[tuple[str, str], Archive] = {
    ("speech-commands", "0.02"): Archive(
        "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
        2428923189, "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"),
    ("speech-commands", "0.01"): Archive(
        "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
        None, "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d"),
}
DATASETS = tuple(dict.fromkeys(name for name, _ in ARCHIVES))


@dataclass(frozen=True)
class FetchResult:
    data_dir: Path
    url: str
    downloaded: bool  # False when an earlier run had already fetched it


def fetch_dataset(name: str, version: str, data_dir: str | os.PathLike, *, url: str | None = None,
                  sha256: str | None = None, keep_archive: bool = False, retries: int = 5,
                  reporter: Reporter | None = None) -> FetchResult:
    """Download, verify and extract a known data set into data_dir (a folder-per-label tree).

    url: another source (a mirror); the published size and checksum then no longer apply.
    sha256: the checksum to require ("skip": none); default: the published one for the official URL.
    """
    reporter = reporter or Reporter()
    known = ARCHIVES.get((name, version))
    if known is None:
        versions = ", ".join(v for n, v in ARCHIVES if n == name)
        choices = f"versions of {name}: {versions}" if versions else f"data sets: {', '.join(DATASETS)}"
        raise FetchError(f"unknown data set {name} {version}; known {choices}")
    archive = known if url is None or url == known.url else Archive(url, None, None)
    if sha256 == "skip":
        archive = Archive(archive.url, archive.size, None)
    elif sha256 is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise FetchError(f"--sha256 must be 64 hex digits or 'skip', got {sha256!r}")
        archive = Archive(archive.url, archive.size, sha256.lower())

    data_dir = Path(data_dir)
    marker = data_dir / MARKER
    if _already_fetched(marker, archive.url):
        return FetchResult(data_dir, archive.url, downloaded=False)
    data_dir.mkdir(parents=True, exist_ok=True)
    filename = os.path.basename(urlparse(archive.url).path) or "archive.tar.gz"
    path = data_dir / filename
    if not (path.is_file() and _verified(path, archive, reporter, quietly=True)):
        download(archive.url, path, expected_size=archive.size, retries=retries, reporter=reporter)
        _verified(path, archive, reporter)  # raises, and removes the download, on a mismatch
    extract(path, data_dir, reporter=reporter)
    check_layout(data_dir)
    with atomic_write(marker) as f:
        json.dump({"url": archive.url, "sha256": archive.sha256, "archive": filename, "kwsbatch": __version__}, f)
        f.write("\n")
    if not keep_archive:
        path.unlink()
    return FetchResult(data_dir, archive.url, downloaded=True)


def _already_fetched(marker: Path, url: str) -> bool:
    try:
        return json.loads(marker.read_text()).get("url") == url
    except (OSError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------- download


def download(url: str, dest: str | os.PathLike, *, expected_size: int | None = None, retries: int = 5,
             timeout: float = 60.0, reporter: Reporter | None = None) -> Path:
    """Fetch url to dest through dest.part, resuming after dropped connections: up to `retries`
    times in a row without progress, waiting 1, 2, 4 ... s between tries."""
    reporter = reporter or Reporter()
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        try:
            if _download_once(url, part, have, expected_size, timeout, reporter):
                break
        except urllib.error.HTTPError as e:
            if e.code < 500:
                raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
            failures = _retry(failures, retries, url, part, have, e.reason, reporter)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
            failures = _retry(failures, retries, url, part, have, getattr(e, "reason", None) or type(e).__name__, reporter)
        except OSError as e:  # the network's errors are above; this is the disk's
            raise FetchError(f"{part}: cannot write the download ({e.strerror or e})") from None
        finally:
            reporter.stop()
    os.replace(part, dest)
    return dest


def _retry(failures: int, retries: int, url: str, part: Path, had: int, reason, reporter: Reporter) -> int:
    """Count a failed try (from zero again when it made progress), wait, and return the count."""
    got = part.stat().st_size if part.exists() else 0
    failures = 1 if got > had else failures + 1
    if failures > retries:
        raise FetchError(f"{url}: download failed {retries} times in a row ({reason}); run again to resume from {part}")
    reporter.warn(f"connection lost after {got / 1e6:,.1f} MB ({reason}); resuming ({failures}/{retries})")
    time.sleep(min(2 ** (failures - 1), 30))
    return failures


def _download_once(url: str, part: Path, have: int, expected_size: int | None, timeout: float,
                   reporter: Reporter) -> bool:
    """One request from byte `have` on; True when part is complete."""
    headers = {"User-Agent": f"kwsbatch/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left past `have`: complete if the total says so
            total = _total_from_content_range(e.headers.get("Content-Range"))
            if total == have and (expected_size is None or total == expected_size):
                return True
            part.unlink()  # larger than the file: not a prefix of it
            return False
        raise
    with response:
        start = 0
        if response.status == 206:
            start = _start_from_content_range(response.headers.get("Content-Range"))
            if start != have:
                raise FetchError(f"{url}: asked to resume at byte {have}, the server sent from {start}")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        if expected_size is not None and total is not None and total != expected_size:
            raise FetchError(f"{url}: the server offers {total:,} bytes, the published archive has {expected_size:,}; "
                             "pass --url for another source")
        reporter.start(f"downloading {os.path.basename(part.name)[:-5]}", total or expected_size, completed=start)
        # 200 after a Range request: the server ignores ranges, so start over.
        with open(part, "ab" if start else "wb") as f:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                reporter.advance(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise http.client.IncompleteRead(b"", total - size)
    return True


def _start_from_content_range(value: str | None) -> int:
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", (value or "").strip())
    return int(match.group(1)) if match else -1


def _total_from_content_range(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes (?:\*|\d+-\d+)/(\d+)", (value or "").strip())
    return int(match.group(1)) if match else None


def _verified(path: Path, archive: Archive, reporter: Reporter, *, quietly: bool = False) -> bool:
    """True when path has the archive's size and checksum; a mismatch raises unless quietly."""
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        if quietly:
            return False
        path.unlink()
        raise FetchError(f"{path}: {size:,} bytes, the published archive has {archive.size:,}; removed it, run again")
    if archive.sha256 is None:
        return True
    digest = hashlib.sha256()
    reporter.start(f"verifying {path.name}", size)
    try:
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
                reporter.advance(len(block))
    finally:
        reporter.stop()
    if digest.hexdigest() == archive.sha256:
        return True
    if quietly:
        return False
    path.unlink()
    raise FetchError(f"{path}: SHA-256 {digest.hexdigest()} is not the expected {archive.sha256}; "
                     "removed the download (if the source changed on purpose, pass --sha256 skip)")


# ------------------------------------------------------------------------------ extract


def extract(archive: str | os.PathLike, dest: str | os.PathLike, *, reporter: Reporter | None = None) -> int:
    """Unpack a tar archive (any compression) into dest, refusing unsafe members; returns the
    number of members. Progress advances by the bytes unpacked."""
    reporter = reporter or Reporter()
    archive, dest = Path(archive), Path(os.path.abspath(dest))
    n = 0
    reporter.start(f"extracting {archive.name}", None)
    try:
        with tarfile.open(archive, "r|*") as tar:  # one streaming pass: no index of 100k members
            for member in tar:
                _check_member(member, dest, archive)
                if hasattr(tarfile, "data_filter"):  # the standard library's checks too, where it has them
                    tar.extract(member, dest, filter="data")
                else:
                    tar.extract(member, dest)
                n += 1
                reporter.advance(member.size)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise FetchError(f"{archive}: damaged or not a tar archive ({e}); delete it and run again") from None
    finally:
        reporter.stop()
    if n == 0:
        raise FetchError(f"{archive}: the archive is empty")
    return n


def _check_member(member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    """Raise unless member lands inside dest and, if a link, points inside dest."""
    name = member.name
    if os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        raise FetchError(f"{archive}: refusing member {name!r}: absolute path")
    target = os.path.normpath(os.path.join(dest, name))
    if not _inside(target, dest):
        raise FetchError(f"{archive}: refusing member {name!r}: it would be written outside {dest}")
    if member.issym() or member.islnk():
        base = os.path.dirname(target) if member.issym() else str(dest)
        link = os.path.normpath(os.path.join(base, member.linkname))
        if os.path.isabs(member.linkname) or not _inside(link, dest):
            raise FetchError(f"{archive}: refusing member {name!r}: it links outside {dest} ({member.linkname})")
    elif not (member.isfile() or member.isdir()):
        raise FetchError(f"{archive}: refusing member {name!r}: not a regular file or folder")


def _inside(path: str, folder: Path) -> bool:
    return os.path.commonpath([path, str(folder)]) == str(folder)


def check_layout(data_dir: str | os.PathLike) -> None:
    """The unpacked tree is folder-per-label with a _background_noise_ folder, as expected."""
    data_dir = Path(data_dir)
    labels = [p.name for p in sorted(data_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")
              and any(is_audio_path(c.name) for c in p.iterdir())]
    if "_background_noise_" not in labels or len(labels) < 2:
        found = ", ".join(p.name for p in sorted(data_dir.iterdir())) or "nothing"
        raise FetchError(f"{data_dir}: expected <word>/ folders of clips and _background_noise_/ at the top of the archive; found {found}")
