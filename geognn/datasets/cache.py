"""Where processed datasets are cached, and how a cache is matched to its source.

A cache file holds plain tensors, lists and strings only (``torch.save``; read back with
``torch.load(weights_only=True)``, which runs no code). Its name is a hash of: the cache format
version, the source's resolved path, size and modification time (for a folder: the number,
total size and latest mtime of the files read), and the processing options. A changed source
or a new format version therefore gets a new file and is reprocessed; old files are left in place
(delete the cache folder to reclaim the space).

Default folder: ``$GEOGNN_CACHE_DIR`` if set, else ``~/.cache/geognn`` (the source folder may
be read-only or shared). Every loader that caches takes ``cache_dir=`` and ``cache=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import torch

#: Bump when the layout of any cached file changes: older caches are then ignored.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("GEOGNN_CACHE_DIR") or Path.home() / ".cache" / "geognn")


def fingerprint(path: Path, files: Iterable[Path] | None = None) -> dict:
    """Identity of a source: resolved path, size and mtime (of ``files`` when ``path`` is a folder)."""
    path = Path(path).resolve()
    if files is None:
        st = path.stat()
        return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sizes, mtimes, count = 0, 0, 0
    for f in files:
        st = f.stat()
        sizes += st.st_size
        mtimes = max(mtimes, st.st_mtime_ns)
        count += 1
    return {"path": str(path), "files": count, "size": sizes, "mtime_ns": mtimes}


def cache_file(kind: str, source: dict, options: dict, cache_dir: str | Path | None = None) -> Path:
    """The cache file for ``kind`` processed from ``source`` (a fingerprint) with ``options``."""
    key = json.dumps(
        {"version": CACHE_VERSION, "kind": kind, "source": source, "options": options}, sort_keys=True, default=str
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(cache_dir or default_cache_dir()) / f"{kind}-v{CACHE_VERSION}-{digest}.pt"


def save(path: Path, payload: dict) -> None:
    """Write ``payload`` atomically (a crash never leaves a half-written cache behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict | None:
    """The cached payload, or None when there is none or it cannot be read (then reprocess)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception:  # truncated or foreign file: reprocess and overwrite
        return None
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
        return None
    return payload
