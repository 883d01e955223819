"""The detection index's storage: the only module that touches the index store.

The index is a directory tree (a HATS catalog) on a local disk or under an S3 prefix; it is
read and written through ``pyarrow.fs`` (the file-system layer pyarrow's Parquet reader
uses natively, so a Parquet footer or row group on S3 is a ranged GET, and nothing else
needs to be installed). S3 endpoints and credentials come from the standard AWS
configuration (``AWS_ENDPOINT_URL`` points it at a local S3), as everywhere in mastmirror.

Names are relative to the index root, '/'-separated. ``write`` is atomic: a reader sees the
old object or the new one whole, never a partial one. On S3 an object appears only when
its upload completes; on a disk the bytes go to a hidden temporary file, are fsynced and
renamed over the name (``lambda_sep.storage.FileStore.put_atomic``), so a kill -9 or a
power cut at any instant leaves the old file or the new one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

IO_THREADS = 8


@dataclass(frozen=True)
class Entry:
    """A file under the index root: its name (relative, '/'-separated) and size in bytes."""

    name: str
    size: int


class IndexStore:
    """A directory (``file:///abs/dir``) or an S3 prefix (``s3://bucket/prefix``)."""

    def __init__(self, url: str) -> None:
        """Open ``url``; nothing is read or created yet."""
        parts = urlsplit(url)
        self.url = url
        self._pool: ThreadPoolExecutor | None = None
        if parts.scheme == "s3":
            prefix = parts.path.strip("/")
            env = os.environ.get
            # The same variables boto3 reads; pyarrow's constructor reads none of them.
            self.fs: pafs.FileSystem = pafs.S3FileSystem(
                region=env("AWS_REGION") or env("AWS_DEFAULT_REGION") or "us-east-1",
                endpoint_override=env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"))
            self.root = f"{parts.netloc}/{prefix}".rstrip("/")
            self.local_root: str | None = None
        elif parts.scheme == "file":
            self.fs = pafs.LocalFileSystem()
            self.root = os.path.normpath(unquote(parts.path))
            self.local_root = self.root
        else:
            raise ValueError(f"index URL must be file:///abs/dir or s3://bucket/prefix: {url!r}")

    def path(self, name: str) -> str:
        """The file system path of ``name`` (for pyarrow readers handed ``self.fs``)."""
        return f"{self.root}/{name}"

    def read(self, name: str) -> bytes | None:
        """The whole object, or None if it does not exist."""
        try:
            with self.fs.open_input_stream(self.path(name)) as fh:
                return bytes(fh.read())
        except FileNotFoundError:
            return None

    def open(self, name: str) -> pa.NativeFile:
        """A random-access handle (ranged reads on S3); FileNotFoundError if absent."""
        if self.local_root is not None:
            return pa.memory_map(self.path(name))
        return self.fs.open_input_file(self.path(name))

    def write(self, name: str, data: bytes) -> None:
        """Write ``data`` at ``name`` atomically (see the module docstring)."""
        if self.local_root is not None:
            from lambda_sep.storage import FileStore

            FileStore(self.local_root).put_atomic(name, data)
            return
        with self.fs.open_output_stream(self.path(name)) as fh:
            fh.write(data)

    def write_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """``write`` each (name, data), several at once (S3 round trips and disk flushes
        overlap); returns when all are written, raises the first failure."""
        self._each(lambda item: self.write(*item), list(items))

    def delete_many(self, names: Iterable[str]) -> None:
        """``delete`` each name, several at once."""
        self._each(self.delete, list(names))

    def _each(self, fn: Callable[[Any], None], items: list[Any]) -> None:
        if len(items) <= 1:
            for item in items:
                fn(item)
            return
        if self._pool is None:  # kept: starting threads for every commit costs more
            self._pool = ThreadPoolExecutor(max_workers=IO_THREADS,
                                            thread_name_prefix="index-io")
        for _ in self._pool.map(fn, items):
            pass

    def close(self) -> None:
        """Stop the I/O threads (a later call starts them again)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def delete(self, name: str) -> None:
        """Remove ``name``; a missing object is fine."""
        try:
            self.fs.delete_file(self.path(name))
        except FileNotFoundError:
            return

    def list(self, prefix: str = "") -> list[Entry]:
        """Every file under ``prefix`` (a folder name, '' = everything), temporary files of
        an interrupted write included, sorted by name."""
        base = self.path(prefix).rstrip("/") if prefix else self.root
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        cut = len(self.root) + 1
        return sorted((Entry(info.path[cut:], info.size or 0)
                       for info in self.fs.get_file_info(selector)
                       if info.type == pafs.FileType.File), key=lambda e: e.name)

    def prune_empty_dirs(self) -> None:
        """Remove empty folders left by deleted partitions (a disk only: S3 has none)."""
        if self.local_root is None:
            return
        for dirpath, _dirs, _files in os.walk(self.local_root, topdown=False):
            if dirpath != self.local_root and not os.listdir(dirpath):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    continue  # refilled meanwhile, or not ours to remove
