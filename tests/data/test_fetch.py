"""scripts/fetch_data.py's machinery over real HTTP on the loopback interface.

A thread runs http.server on 127.0.0.1 (port 0) serving a mirror directory: ../shared/data
when present (the registry's real files and checksums), else small generated files whose
sha256 the test computes with hashlib and registers as test-only DataFile entries. The server
can cut a response off after N bytes (closing the connection) and logs every request, so the
tests see what each run asked for.
"""
import functools
import hashlib
import http.server
import os
import threading

import pytest

from llmserve.data import registry
from llmserve.data.fetch import FetchError, fetch, fetch_file

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler + Range requests + a cut-off after `cut_after` bytes."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and srv.ranges and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = srv.cut_after.pop(0) if srv.cut_after else None
        if cut is not None:     # the server dies mid-transfer: half the bytes, then EOF
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def mirror(tmp_path_factory):
    """-> (base URL, server, {name: DataFile}) for 2-3 files in the mirror directory."""
    if os.path.isdir(SHARED):
        root = os.path.abspath(SHARED)
        names = ["azure_conv_2023", "fastchat_dummy_conversation",
                 "castillo_llama31_8b_ds1000_validate"]
        files = {n: registry.DATASETS[n] for n in names}
    else:
        root = str(tmp_path_factory.mktemp("mirror"))
        files = {}
        for i, size in enumerate((700_000, 180_000)):
            blob = bytes((j * 7 + i) % 251 for j in range(size))
            name = f"generated_{i}"
            with open(os.path.join(root, name + ".bin"), "wb") as f:
                f.write(blob)
            files[name] = registry.DataFile(name, name + ".bin", "https://example.invalid/",
                                            size, hashlib.sha256(blob).hexdigest(), "test",
                                            "azure_csv")
    handler = functools.partial(_Handler, directory=root)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.requests, srv.cut_after, srv.ranges = [], [], True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv, files, root
    srv.shutdown()
    srv.server_close()


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_fresh_fetch_then_a_second_run_does_nothing(mirror, tmp_path):
    url, srv, files, root = mirror
    out = fetch(files.values(), str(tmp_path), mirror=url)
    assert [r["status"] for r in out] == ["fetched"] * len(files)
    for f in files.values():
        path = tmp_path / f.filename
        # the oracle: the mirror's bytes, hashed here, and the registry's checksum
        assert _sha(path) == _sha(os.path.join(root, f.filename)) == f.sha256
        assert path.stat().st_size == f.size
    assert not list(tmp_path.glob("*.part"))
    n = len(srv.requests)
    mtimes = {f.name: (tmp_path / f.filename).stat().st_mtime_ns for f in files.values()}
    again = fetch(files.values(), str(tmp_path), mirror=url)
    assert [r["status"] for r in again] == ["present"] * len(files)
    assert len(srv.requests) == n           # no byte asked for
    assert mtimes == {f.name: (tmp_path / f.filename).stat().st_mtime_ns
                      for f in files.values()}


def test_checksum_mismatch_is_an_error_and_leaves_no_file(mirror, tmp_path):
    url, srv, files, _ = mirror
    f = next(iter(files.values()))
    wrong = registry.DataFile(f.name, f.filename, f.url, f.size, "0" * 64, f.license, f.format)
    with pytest.raises(ValueError) as e:
        fetch_file(wrong, str(tmp_path), mirror=url)
    msg = str(e.value)
    assert f.name in msg and "0" * 64 in msg and f.sha256 in msg and "deleted" in msg
    assert not os.path.exists(tmp_path / f.filename)
    assert not os.path.exists(tmp_path / (f.filename + ".part"))


def test_cut_off_download_leaves_no_visible_file_and_the_next_run_resumes(mirror, tmp_path):
    url, srv, files, _ = mirror
    f = max(files.values(), key=lambda x: x.size)
    cut = f.size // 3
    srv.cut_after = [cut]
    with pytest.raises(FetchError, match="run the fetch again"):
        fetch_file(f, str(tmp_path), mirror=url, retries=0)
    assert not os.path.exists(tmp_path / f.filename)        # nothing under the final name
    part = tmp_path / (f.filename + ".part")
    assert part.stat().st_size == cut
    srv.requests.clear()
    r = fetch_file(f, str(tmp_path), mirror=url, retries=0)
    assert r["status"] == "fetched" and _sha(tmp_path / f.filename) == f.sha256
    assert srv.requests == [(f"/{f.filename}", f"bytes={cut}-")]   # resumed, not restarted
    assert not part.exists()


def test_retries_within_one_run_and_a_server_without_ranges(mirror, tmp_path):
    url, srv, files, _ = mirror
    f = max(files.values(), key=lambda x: x.size)
    srv.cut_after, srv.ranges = [1000, 5000], False     # two cut-offs, then the whole file
    r = fetch_file(f, str(tmp_path), mirror=url, retries=2)
    assert r["status"] == "fetched" and _sha(tmp_path / f.filename) == f.sha256
    assert len(srv.requests) == 3 and srv.requests[1][1] == "bytes=1000-"


def test_corrupt_file_under_the_final_name_is_replaced(mirror, tmp_path):
    url, srv, files, _ = mirror
    f = next(iter(files.values()))
    (tmp_path / f.filename).write_bytes(b"x" * f.size)      # right size, wrong bytes
    r = fetch_file(f, str(tmp_path), mirror=url)
    assert r["status"] == "fetched" and _sha(tmp_path / f.filename) == f.sha256


def test_local_directory_mirror_and_a_stampless_copy(mirror, tmp_path):
    _, srv, files, root = mirror
    out = fetch(files.values(), str(tmp_path / "a"), mirror=root)
    assert [r["status"] for r in out] == ["fetched"] * len(files) and not srv.requests
    # the mirror used as the data directory itself: files hashed, none copied
    again = fetch(files.values(), root)
    assert {r["status"] for r in again} <= {"verified", "present"}
    assert all(r["path"] == os.path.join(root, f.filename)
               for r, f in zip(again, files.values()))


def test_missing_file_on_the_mirror_names_it(mirror, tmp_path):
    url, _, files, root = mirror
    f = next(iter(files.values()))
    ghost = registry.DataFile("ghost", "ghost.json", f.url, 10, "0" * 64, "x", "castillo")
    with pytest.raises(ValueError, match="HTTP 404.*ghost.json"):
        fetch_file(ghost, str(tmp_path), mirror=url)
    with pytest.raises(ValueError, match="ghost.json does not exist"):
        fetch_file(ghost, str(tmp_path), mirror=root)
    assert not list(tmp_path.iterdir())


def test_unreachable_server_is_a_fetch_error_not_a_traceback(mirror, tmp_path):
    import socket
    _, _, files, _ = mirror
    with socket.socket() as s:          # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = next(iter(files.values()))
    with pytest.raises(FetchError, match="127.0.0.1"):
        fetch_file(f, str(tmp_path), mirror=f"http://127.0.0.1:{port}", retries=0)
    assert not os.path.exists(tmp_path / f.filename)
