"""kwsbatch.corpus.fetch and `kwsbatch fetch`, against an HTTP server on 127.0.0.1 (no test uses the internet)."""

import csv
import hashlib
import http.server
import io
import json
import re
import tarfile
import threading

import pytest
from conftest import run_main
from sc_tree import make_tree

from kwsbatch.corpus.fetch import ARCHIVES, MARKER, FetchError, extract


class ArchiveServer:
    """Serves bytes at /<name> with HTTP Range support; can cut the first response off midway
    (once) or ignore Range headers. Records each request's Range header."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_once = False
        self.honour_range = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and server.honour_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_once:
                    server.cut_once = False
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True  # the client sees the connection drop mid-file
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ArchiveServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    """A small Speech-Commands-like tar.gz (members at the top, like the real one, with lists)."""
    root = tmp_path_factory.mktemp("src")
    speakers = make_tree(root, words=("yes", "no", "cat"))
    (root / "validation_list.txt").write_text("".join(f"{w}/{s}_nohash_0.wav\n" for w in ("yes", "no", "cat") for s in speakers["val"]))
    (root / "testing_list.txt").write_text("".join(f"{w}/{s}_nohash_0.wav\n" for w in ("yes", "no", "cat") for s in speakers["test"]))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(root.iterdir()):
            tar.add(path, arcname=f"./{path.name}")
    return buffer.getvalue()


def _fetch(server, name, data_dir, *extra):
    return run_main("fetch", "speech-commands", data_dir, "--url", server.url(name), "--words", "yes,no", *extra)


def test_fetch_resumes_a_cut_download_then_writes_manifests(server, archive, tmp_path):
    server.files["sc.tar.gz"] = archive
    server.cut_once = True
    data = tmp_path / "data"
    result = _fetch(server, "sc.tar.gz", data)
    assert result.returncode == 0, result.stderr
    assert "connection lost" in result.stderr and "resuming (1/5)" in result.stderr
    (_, first), (_, second) = server.requests
    assert first is None and second == f"bytes={len(archive) // 2}-"
    assert sorted(p.name for p in data.iterdir()) == [
        MARKER, "_background_noise_", "cat", "manifests", "no", "testing_list.txt", "validation_list.txt", "yes"]
    assert not list(data.glob("*.tar.gz*"))  # the archive is removed once unpacked
    rows = list(csv.DictReader(open(data / "manifests" / "test.csv")))
    assert {r["label"] for r in rows} == {"yes", "no", "_unknown_", "_silence_"}
    assert json.loads((data / "manifests" / "splits.json").read_text())["split_by"] == "lists"

    # A second run finds the marker: nothing is downloaded again.
    again = _fetch(server, "sc.tar.gz", data, "--no-manifest")
    assert again.returncode == 0 and "already fetched" in again.stderr
    assert len(server.requests) == 2


def test_fetch_resumes_a_partial_file_left_by_a_killed_run(server, archive, tmp_path):
    server.files["sc.tar.gz"] = archive
    data = tmp_path / "data"
    data.mkdir()
    (data / "sc.tar.gz.part").write_bytes(archive[:1000])
    result = _fetch(server, "sc.tar.gz", data, "--keep-archive", "--no-manifest")
    assert result.returncode == 0, result.stderr
    assert server.requests == [("sc.tar.gz", "bytes=1000-")]
    assert (data / "sc.tar.gz").read_bytes() == archive
    assert not (data / "manifests").exists()


def test_a_server_that_ignores_range_sends_the_whole_file_again(server, archive, tmp_path):
    server.files["sc.tar.gz"] = archive
    server.honour_range = False
    data = tmp_path / "data"
    data.mkdir()
    (data / "sc.tar.gz.part").write_bytes(b"x" * 500)  # garbage that a 200 response must replace
    result = _fetch(server, "sc.tar.gz", data, "--keep-archive", "--no-manifest")
    assert result.returncode == 0, result.stderr
    assert (data / "sc.tar.gz").read_bytes() == archive


def test_checksum_mismatch_removes_the_download(server, archive, tmp_path):
    server.files["sc.tar.gz"] = archive
    data = tmp_path / "data"
    result = _fetch(server, "sc.tar.gz", data, "--sha256", "0" * 64)
    assert result.returncode == 1
    assert f"is not the expected {'0' * 64}" in result.stderr
    assert not list(data.glob("sc.tar.gz*")) and not (data / "yes").exists()
    right = hashlib.sha256(archive).hexdigest()
    assert _fetch(server, "sc.tar.gz", data, "--sha256", right).returncode == 0


def _tar(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def _file(name, payload=b"data"):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("member, why", [
    (_file("../evil.txt"), "outside"),
    (_file("yes/../../evil.txt"), "outside"),
    (_file("/tmp/kwsbatch-evil.txt"), "absolute path"),
    (_link("yes/escape", "../../evil.txt"), "links outside"),
    (_link("yes/escape", "/etc/passwd"), "links outside"),
    (_link("hard", "../evil.txt", tarfile.LNKTYPE), "links outside"),
])
def test_members_outside_the_folder_are_refused(server, tmp_path, member, why):
    server.files["bad.tar.gz"] = _tar([_file("yes/a_nohash_0.wav"), member])
    data = tmp_path / "box" / "data"
    result = _fetch(server, "bad.tar.gz", data)
    assert result.returncode == 1
    assert "refusing member" in result.stderr and why in result.stderr
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["data"]  # nothing landed beside it
    assert not (data / MARKER).exists()


def test_extract_keeps_links_that_stay_inside(tmp_path):
    path = tmp_path / "ok.tar"
    path.write_bytes(_tar([_file("yes/a.wav"), _link("yes/b.wav", "a.wav")]))
    assert extract(path, tmp_path / "out") == 2
    assert (tmp_path / "out" / "yes" / "b.wav").read_bytes() == b"data"


def test_damaged_and_unexpected_archives_are_one_line_errors(server, archive, tmp_path):
    server.files["cut.tar.gz"] = archive[: len(archive) // 2]
    result = _fetch(server, "cut.tar.gz", tmp_path / "a")
    assert result.returncode == 1 and "damaged or not a tar archive" in result.stderr
    server.files["flat.tar.gz"] = _tar([_file("README.md")])
    result = _fetch(server, "flat.tar.gz", tmp_path / "b")
    assert result.returncode == 1 and "expected <word>/ folders of clips and _background_noise_/" in result.stderr
    result = _fetch(server, "missing.tar.gz", tmp_path / "c")
    assert result.returncode == 1 and result.stderr.strip() == f"error: {server.url('missing.tar.gz')}: HTTP 404 Not Found"


def test_unknown_data_sets_and_versions():
    result = run_main("fetch", "speech-commands", "x", "--dataset-version", "0.03")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: unknown data set speech-commands 0.03; known versions of speech-commands: 0.02, 0.01"
    assert "known data sets: speech-commands" in run_main("fetch", "librispeech", "x").stderr


def test_published_archives_are_pinned():
    v2 = ARCHIVES["speech-commands", "0.02"]
    assert v2.url == "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
    assert (v2.size, v2.sha256[:8]) == (2428923189, "af14739e")
    assert ARCHIVES["speech-commands", "0.01"].sha256[:8] == "74393542"
    with pytest.raises(FetchError, match="64 hex digits"):
        from kwsbatch.corpus.fetch import fetch_dataset
        fetch_dataset("speech-commands", "0.02", "unused", sha256="abc")


@pytest.mark.slow
def test_fetch_then_train_then_evaluate(server, archive, tmp_path):
    """The walk-through in docs/training.md, on the loopback archive: fetch -> train -> evaluate."""
    server.files["sc.tar.gz"] = archive
    data = tmp_path / "sc"
    assert _fetch(server, "sc.tar.gz", data, "-q").returncode == 0
    manifests = data / "manifests"
    run_main("train", manifests / "train.csv", "--val", manifests / "val.csv", "-o", tmp_path / "run",
            "--epochs", "2", "--hidden", "16", "--layers", "1", "--batch-size", "8", "-q", check=True)
    run_main("evaluate", manifests / "test.csv", "--model", tmp_path / "run" / "best.pt", "-o", tmp_path / "report", "-q", check=True)
    predictions = list(csv.DictReader(open(tmp_path / "report" / "predictions.csv")))
    assert len(predictions) == len(list(csv.DictReader(open(manifests / "test.csv"))))
    assert {"yes", "no", "_unknown_", "_silence_"} == {r["label"] for r in csv.DictReader(open(tmp_path / "report" / "per_class.csv"))}


def test_a_complete_part_file_is_finished_without_downloading_again(server, archive, tmp_path):
    """Killed after the last byte but before the rename: the server answers 416, nothing is sent."""
    server.files["sc.tar.gz"] = archive
    data = tmp_path / "data"
    data.mkdir()
    (data / "sc.tar.gz.part").write_bytes(archive)
    result = _fetch(server, "sc.tar.gz", data, "--keep-archive", "--no-manifest")
    assert result.returncode == 0, result.stderr
    assert server.requests == [("sc.tar.gz", f"bytes={len(archive)}-")]
    assert (data / "sc.tar.gz").read_bytes() == archive


def test_a_server_that_keeps_failing_gives_up_with_a_one_line_error(tmp_path):
    from kwsbatch.corpus.fetch import download

    with pytest.raises(FetchError, match=r"download failed 1 times in a row \(.*\); run again to resume"):
        download("http://127.0.0.1:9/nothing.tar.gz", tmp_path / "x.tar.gz", retries=1, timeout=5)
