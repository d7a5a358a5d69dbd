"""`bertforge download` against a real HTTP server on this machine (http.server in a thread,
with HTTP Range support) serving the official files from ../shared/data: a full download checked
against the published checksum, a checksum failure, the resume of a partial file, the error when
the server cannot be reached, and GLUE's MRPC built from the Microsoft corpus files."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bertforge import download
from bertforge.cli import main
from bertforge.data import glue as glue_data
from bertforge.errors import ConfigError
from conftest import shared


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves a folder; answers `Range: bytes=N-` with 206 (unless the server says to ignore
    ranges) and records every request's path, Range header and body size."""

    def do_GET(self):
        server = self.server
        path = Path(self.translate_path(self.path))
        wanted = self.headers.get("Range")
        if not path.is_file():
            self.send_error(404)
            server.log.append((self.path, wanted, 0))
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if match and not server.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                server.log.append((self.path, wanted, 0))
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        server.log.append((self.path, wanted, len(body)))

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def server(tmp_path):
    """A server on 127.0.0.1 for the folder tmp_path/www; yields (base URL, folder, server)."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    httpd.log, httpd.ignore_range = [], False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, httpd
    httpd.shutdown()
    httpd.server_close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


DEV = "dev-v1.1.json"


def test_squad_dev_download_is_verified_against_the_published_checksum(server, tmp_path, capsys):
    url, root, httpd = server
    (root / DEV).symlink_to(shared("squad", "v1.1", DEV))
    cache = tmp_path / "cache"
    assert main(["download", "squad", "--splits", "dev", "--cache_dir", str(cache), "--mirror", url]) == 0
    got = cache / "squad" / "v1.1" / DEV
    assert got.read_bytes() == shared("squad", "v1.1", DEV).read_bytes()
    assert sha256(got) == download.SQUAD_FILES["dev"].sha256  # the published value is the real file's
    assert not list(got.parent.glob("*.part"))
    assert httpd.log == [(f"/{DEV}", None, got.stat().st_size)]
    assert str(cache / "squad" / "v1.1") in capsys.readouterr().out
    # again: nothing fetched, the cached file is verified
    assert main(["download", "squad", "--splits", "dev", "--cache_dir", str(cache), "--mirror", url]) == 0
    assert len(httpd.log) == 1


def test_a_file_that_does_not_match_its_checksum_is_refused(server, tmp_path, capsys):
    url, root, _ = server
    data = bytearray(shared("squad", "v1.1", DEV).read_bytes())
    data[1000] ^= 1  # one bit flipped on the way
    (root / DEV).write_bytes(bytes(data))
    cache = tmp_path / "cache"
    assert main(["download", "squad", "--splits", "dev", "--cache_dir", str(cache), "--mirror", url]) == 2
    err = capsys.readouterr().err
    assert f"{url}/{DEV}: the download's SHA-256 is {hashlib.sha256(data).hexdigest()}" in err
    assert f"not the published {download.SQUAD_FILES['dev'].sha256}" in err
    assert list((cache / "squad" / "v1.1").iterdir()) == []  # neither the file nor its .part


@pytest.mark.parametrize("ignore_range", [False, True])
def test_a_partial_download_is_continued(server, tmp_path, ignore_range):
    url, root, httpd = server
    httpd.ignore_range = ignore_range
    real = shared("squad", "v1.1", DEV).read_bytes()
    (root / DEV).symlink_to(shared("squad", "v1.1", DEV))
    cache = tmp_path / "cache"
    part = cache / "squad" / "v1.1" / f"{DEV}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(real[:1_000_000])  # an earlier download broke off here
    paths = download.download_squad(cache, "dev", mirror=url, progress=False)
    assert paths["dev"].read_bytes() == real and not part.exists()
    ((path, sent_range, sent),) = httpd.log
    assert sent_range == "bytes=1000000-"
    # a server that honours the range sends the rest only; one that does not, all of it
    assert sent == (len(real) if ignore_range else len(real) - 1_000_000)


def test_an_unreachable_server_names_the_url(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mirror = f"http://127.0.0.1:{port}"
    cache = tmp_path / "cache"
    assert main(["download", "squad", "--splits", "dev", "--cache_dir", str(cache), "--mirror", mirror]) == 2
    err = capsys.readouterr().err
    assert f"cannot download {mirror}/{DEV}" in err and "Without internet access" in err
    assert str(cache / "squad" / "v1.1" / DEV) in err


def test_a_missing_file_is_an_http_error(server, tmp_path, capsys):
    url, _, _ = server
    assert main(["download", "squad", "--splits", "train", "--cache_dir", str(tmp_path), "--mirror", url]) == 2
    assert f"cannot download {url}/train-v1.1.json: HTTP 404" in capsys.readouterr().err


def test_default_cache_dir_follows_xdg(server, tmp_path, monkeypatch):
    url, root, _ = server
    (root / DEV).symlink_to(shared("squad", "v1.1", DEV))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["download", "squad", "--splits", "dev", "--mirror", url]) == 0
    assert (tmp_path / "xdg" / "bertforge" / "squad" / "v1.1" / DEV).is_file()


def test_mrpc_is_built_as_glue_ships_it(server, tmp_path, monkeypatch):
    """The Microsoft corpus files from ../shared/data and the list of GLUE's dev pairs (read
    here from GLUE's own dev.tsv) give GLUE's train/dev/test.tsv, row for row."""
    url, root, _ = server
    mrpc = shared("glue", "MRPC")
    for name in ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt"):
        (root / name).symlink_to(mrpc / name)
    dev_rows = [line.split("\t") for line in (mrpc / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]]
    (root / "mrpc_dev_ids.tsv").write_text("".join(f"{r[1]}\t{r[2]}\n" for r in dev_rows))
    # The copies here are not byte for byte the SentEval ones the published checksums are of:
    # check them against their own.
    for key, remote in download.MRPC_FILES.items():
        local = root / remote.name
        monkeypatch.setitem(download.MRPC_FILES, key, download.RemoteFile(remote.url, sha256(local),
                                                                          local.stat().st_size))
    out = download.download_glue(tmp_path / "cache", "mrpc", mirror=url, progress=False)["mrpc"]
    assert out == tmp_path / "cache" / "glue" / "MRPC"
    for split in ("train", "dev", "test"):
        ours = (out / f"{split}.tsv").read_text(encoding="utf-8-sig").splitlines()
        glue = (mrpc / f"{split}.tsv").read_text(encoding="utf-8-sig").splitlines()
        assert ours == glue, split
    task = glue_data.get_task("mrpc")
    counts = [len(glue_data.read_split(task, str(out), s)) for s in ("train", "dev", "test")]
    assert counts == [3668, 408, 1725]


def test_a_glue_zip_is_verified_and_extracted_once(server, tmp_path, monkeypatch):
    url, root, httpd = server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:  # laid out as GLUE's CoLA.zip: a CoLA/ folder
        for name in ("train.tsv", "dev.tsv"):
            z.write(shared("glue", "CoLA", name), f"CoLA/{name}")
    (root / "CoLA.zip").write_bytes(buffer.getvalue())
    monkeypatch.setitem(download.GLUE_ZIPS, "cola", download.RemoteFile(
        f"{download.GLUE_URL}CoLA.zip", hashlib.sha256(buffer.getvalue()).hexdigest(), len(buffer.getvalue())))
    cache = tmp_path / "cache"
    assert main(["download", "glue", "--task", "cola", "--cache_dir", str(cache), "--mirror", url]) == 0
    out = cache / "glue" / "CoLA"
    assert (out / "train.tsv").read_bytes() == shared("glue", "CoLA", "train.tsv").read_bytes()
    (out / "dev.tsv").unlink()  # extraction is skipped when done from this zip before ...
    assert main(["download", "glue", "--task", "cola", "--cache_dir", str(cache), "--mirror", url]) == 0
    assert not (out / "dev.tsv").exists() and len(httpd.log) == 1
    (out / ".source_sha256").write_text("another zip\n")  # ... and redone when not
    assert main(["download", "glue", "--task", "cola", "--cache_dir", str(cache), "--mirror", url]) == 0
    assert (out / "dev.tsv").read_bytes() == shared("glue", "CoLA", "dev.tsv").read_bytes()


def test_unknown_task_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="--task_name 'colaa': expected a comma-separated list of cola, sst2"):
        download.download_glue(tmp_path, "colaa")


def test_every_glue_task_has_a_source():
    assert set(download.GLUE_ZIPS) | {"mrpc"} == set(glue_data.TASKS)
    for remote in [*download.GLUE_ZIPS.values(), *download.MRPC_FILES.values(), *download.SQUAD_FILES.values()]:
        assert re.fullmatch(r"[0-9a-f]{64}", remote.sha256) and remote.size > 0
        assert remote.url.startswith("https://")
