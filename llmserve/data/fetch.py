"""Download registry files into the data directory, verified by sha256.

A file is written to `NAME.part` next to its final name and renamed only once its sha256
matches, so the final name never holds a partial or wrong file. A `.part` left by a cut-off
download is resumed (an HTTP Range request, or a seek into a local mirror's file) by the
retries of the same run or by the next run. Once verified, a file gets a stamp
(`.NAME.verified`: size, mtime and sha256); a later run that finds the file with the stamp's
size and mtime does nothing and reads no byte of it. Without a stamp (a directory filled by
hand, or read-only) the file is hashed once per run instead.

The source is the registry's upstream URL, or with `mirror` the same file name under a local
directory or another base URL (offline machines, CI).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable

from llmserve.data.registry import DataFile, data_dir

log = logging.getLogger("llmserve.data")
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download that failed for a reason a retry or a later run may fix."""


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def source_of(f: DataFile, mirror: str = "") -> str:
    """Where `f` is read from: its upstream URL, or its file name under `mirror`."""
    if not mirror:
        return f.url
    if urllib.parse.urlparse(mirror).scheme in ("http", "https", "file"):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(f.filename)
    return os.path.join(os.path.expanduser(mirror), f.filename)


def _stamp_path(path: str) -> str:
    d, base = os.path.split(path)
    return os.path.join(d, f".{base}.verified")


def _stamp_ok(path: str, f: DataFile) -> bool:
    try:
        with open(_stamp_path(path)) as fh:
            s = json.load(fh)
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return s == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": f.sha256}


def _write_stamp(path: str, f: DataFile) -> None:
    st = os.stat(path)
    try:
        with open(_stamp_path(path), "w") as fh:
            json.dump({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": f.sha256}, fh)
    except OSError:     # a read-only shared copy: it is hashed on each run instead
        pass


class _Progress:
    """A text progress bar logged at every 10% (no terminal control codes, so it reads the
    same in a log file and in a notebook)."""

    def __init__(self, name: str, total: int, start: int = 0):
        self.name, self.total, self.next = name, total, (start * 10 // max(total, 1) + 1) * 10

    def update(self, done: int) -> None:
        pct = done * 100 // max(self.total, 1)
        if pct >= self.next or done == self.total:
            bar = "#" * (pct // 5)
            log.info("%s [%-20s] %3d%% %.1f/%.1f MB", self.name, bar, pct, done / 1e6,
                     self.total / 1e6)
            self.next = (pct // 10 + 1) * 10


def _open_source(src: str, offset: int, timeout_s: float):
    """-> (readable, offset it starts at). HTTP asks for the rest with a Range request; a
    server that ignores it sends the whole file, and the caller restarts."""
    if urllib.parse.urlparse(src).scheme in ("http", "https", "file"):
        req = urllib.request.Request(src, headers={"User-Agent": "llmserve-fetch"})
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        try:
            resp = urllib.request.urlopen(req, timeout=timeout_s)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:        # the .part is already whole (or longer)
                return None, offset
            if e.code >= 500 or e.code == 429:  # the server's trouble: worth a retry
                raise FetchError(f"HTTP {e.code} {e.reason} for {src}") from None
            raise ValueError(f"HTTP {e.code} {e.reason} for {src}") from None
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
            raise FetchError(f"{src}: {getattr(e, 'reason', e)}") from None
        start = offset if getattr(resp, "status", 200) == 206 else 0
        return resp, start
    if not os.path.isfile(src):
        raise ValueError(f"{src} does not exist (the mirror must hold the registry's file "
                         "names)")
    fh = open(src, "rb")
    fh.seek(offset)
    return fh, offset


def _download(f: DataFile, src: str, part: str, timeout_s: float) -> None:
    """Append the missing bytes of `f` to `part`; FetchError if the source stops early."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if have > f.size:
        os.remove(part)
        have = 0
    if have == f.size:
        return
    body, start = _open_source(src, have, timeout_s)
    if body is None:
        return
    if start == 0 and have:
        log.info("%s: the source does not resume, starting over", f.name)
    done = start
    bar = _Progress(f.name, f.size, done)
    with body, open(part, "r+b" if start else "wb") as out:
        out.seek(start)
        out.truncate()
        try:
            while block := body.read(_CHUNK):
                out.write(block)
                done += len(block)
                bar.update(done)
                if done > f.size:
                    break
        except (http.client.IncompleteRead, OSError) as e:
            raise FetchError(f"{f.name}: the transfer broke off after {done:,} of "
                             f"{f.size:,} bytes ({type(e).__name__})") from None
        finally:
            out.flush()
            os.fsync(out.fileno())
    if done < f.size:
        raise FetchError(f"{f.name}: the transfer broke off after {done:,} of {f.size:,} "
                         "bytes")


def fetch_file(f: DataFile, directory: str | None = None, mirror: str = "", retries: int = 2,
               timeout_s: float = 60.0) -> dict:
    """Make `directory`/f.filename hold f's verified bytes. -> {name, path, status, bytes,
    seconds} with status 'present' (nothing read), 'verified' (hashed, no download) or
    'fetched'. A sha256 mismatch is a ValueError and leaves nothing under either name; a
    transfer that keeps breaking off is a FetchError that keeps the .part for the next run."""
    t0 = time.perf_counter()
    d = directory or data_dir()
    path = os.path.join(d, f.filename)
    result = {"name": f.name, "path": path, "bytes": f.size}
    if os.path.isfile(path):
        if _stamp_ok(path, f):
            return {**result, "status": "present", "seconds": time.perf_counter() - t0}
        if os.path.getsize(path) == f.size and sha256_of(path) == f.sha256:
            _write_stamp(path, f)
            return {**result, "status": "verified", "seconds": time.perf_counter() - t0}
        log.warning("%s: %s does not match the registry's sha256; downloading it again",
                    f.name, path)
    os.makedirs(d, exist_ok=True)
    src = source_of(f, mirror)
    part = path + ".part"
    log.info("%s: %s -> %s (%.1f MB)", f.name, src, path, f.size / 1e6)
    for attempt in range(retries + 1):
        try:
            _download(f, src, part, timeout_s)
            break
        except FetchError as e:
            if attempt == retries:
                raise FetchError(f"{e}; the partial download {part} is kept: run the fetch "
                                 "again to resume it") from None
            log.warning("%s (attempt %d of %d), resuming", e, attempt + 1, retries + 1)
            time.sleep(min(2.0 ** attempt, 10.0))
    got = sha256_of(part)
    if got != f.sha256:
        os.remove(part)
        raise ValueError(f"dataset {f.name!r} from {src}: sha256 {got} does not match the "
                         f"registry's {f.sha256}; the download was deleted and nothing was "
                         f"written to {path} (a different upstream file, or a wrong mirror)")
    os.replace(part, path)
    _write_stamp(path, f)
    return {**result, "status": "fetched", "seconds": time.perf_counter() - t0}


def fetch(files: Iterable[DataFile], directory: str | None = None, mirror: str = "",
          retries: int = 2, timeout_s: float = 60.0) -> list[dict]:
    """fetch_file for each file, in order; the first failure stops the run."""
    return [fetch_file(f, directory, mirror, retries, timeout_s) for f in files]
