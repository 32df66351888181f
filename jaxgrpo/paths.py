"""One path layer for every host-side file of a run: local paths and URLs alike.

A run directory may be a local path or a URL (``gs://bucket/runs/x``, ``s3://...``, or fsspec's
``memory://`` in tests). Every host-side file of a run (config.json, the fingerprint, metrics,
samples, evaluations, summary, plots, the lock record) is read and written through the functions
here, so the same code writes to a disk or a bucket. Local paths go through ``os`` (the run
directory's JSONL files are truncated in place on resume, which object stores cannot do); URLs go
through fsspec (the filesystem implementation of the scheme, e.g. gcsfs for ``gs://``, must be
installed where the run happens). Orbax writes the checkpoints itself (it takes URLs as they are).

A URL is never made absolute against the working directory: ``resolve("gs://b/x")`` is
``"gs://b/x"``, where ``os.path.abspath`` would make ``<cwd>/gs:/b/x``.
"""
from __future__ import annotations

import os
import posixpath
from typing import IO, List

__all__ = ["is_url", "resolve", "join", "dirname", "basename", "exists", "isdir", "isfile",
           "makedirs", "listdir", "open_file", "read_text", "write_text", "write_atomic",
           "remove", "getsize", "rewrite"]


def is_url(path: str) -> bool:
    """True for ``scheme://...`` (gs, s3, memory, ...); a local path (even ``C:\\``) is not."""
    head, sep, _ = str(path).partition("://")
    return bool(sep) and head.isidentifier() and len(head) > 1


def _fs(path: str):
    import fsspec

    fs, _ = fsspec.core.url_to_fs(path)
    return fs


def resolve(path: str) -> str:
    """An absolute local path, or the URL unchanged (trailing slashes dropped)."""
    path = os.fspath(path)
    if is_url(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
    """``path/part/...``: posix joining for a URL, ``os.path.join`` for a local path."""
    if is_url(path):
        return posixpath.join(path, *parts)
    return os.path.join(path, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path) if is_url(path) else os.path.dirname(path)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def exists(path: str) -> bool:
    return _fs(path).exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _fs(path).isdir(path) if is_url(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    return _fs(path).isfile(path) if is_url(path) else os.path.isfile(path)


def makedirs(path: str) -> None:
    """Creates ``path`` and its parents (an object store has no directories: a no-op there
    beyond what the filesystem implementation does)."""
    if is_url(path):
        _fs(path).makedirs(path, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> List[str]:
    """The names (not paths) in directory ``path``; [] when it does not exist."""
    if not is_url(path):
        return os.listdir(path) if os.path.isdir(path) else []
    fs = _fs(path)
    if not fs.isdir(path):
        return []
    return sorted({posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)})


def open_file(path: str, mode: str = "r") -> IO:
    """An open file (text modes decode UTF-8)."""
    if not is_url(path):
        return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    return _fs(path).open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def read_text(path: str) -> str:
    with open_file(path, "r") as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    with open_file(path, "w") as f:
        f.write(text)


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` so that a reader never sees half of it: a temporary file renamed over
    ``path`` (local), or one object upload (a URL: object stores replace whole objects)."""
    if is_url(path):
        write_text(path, text)
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def remove(path: str) -> None:
    if is_url(path):
        _fs(path).rm(path)
    else:
        os.remove(path)


def getsize(path: str) -> int:
    return _fs(path).size(path) if is_url(path) else os.path.getsize(path)


def rewrite(path: str, data: bytes) -> None:
    """Replaces the whole content of ``path`` by ``data`` (bytes)."""
    with open_file(path, "wb") as f:
        f.write(data)


class AppendFile:
    """A text file that is appended to line by line, on a disk or in a bucket. Local: an
    ``open(path, "a")`` handle. URL: object stores cannot append, so the content is kept and
    the whole object rewritten on ``flush`` (metrics / samples files are small: a few MB)."""

    def __init__(self, path: str):
        self.path = path
        self._local = None if is_url(path) else open(path, "a", encoding="utf-8")
        self.closed = False
        self._buf = None  # read at the first write: after a resume's rewind, not before
        self._dirty = False

    def write(self, s: str) -> int:
        if self._local is not None:
            return self._local.write(s)
        if self._buf is None:
            self._buf = read_text(self.path) if exists(self.path) else ""
        self._buf += s
        self._dirty = True
        return len(s)

    def flush(self) -> None:
        if self._local is not None:
            self._local.flush()
        elif self._dirty:
            write_text(self.path, self._buf)
            self._dirty = False

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        if self._local is not None:
            self._local.close()
        self.closed = True
