"""OCI image layout archives written without Docker or a registry (imported with `ctr images import`).

Two kinds of layer: small ones built in memory from FileEntry lists (the sandbox's pause and busybox
images), and directory trees streamed to a gzip file (the product image's Debian rootfs and the
overlayfs upper directories its pip steps leave). Entries are sorted and carry fixed owners' names,
in-memory layers and the archive itself use mtime 0, so a digest only changes when the content does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str  # inside the image, no leading slash
    data: bytes | None = None  # None with link: a symlink
    link: str = ""
    mode: int = 0o755


@dataclass(frozen=True)
class Layer:
    """A layer blob as stored in the archive (bytes in memory or a file) and its uncompressed digest."""

    source: bytes | Path
    digest: str  # sha256 of the blob as stored
    size: int
    diff_id: str  # sha256 of the uncompressed tar (the image config's rootfs.diff_ids)
    media_type: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "diff_id": self.diff_id, "media_type": self.media_type}

    @classmethod
    def from_json(cls, blob: Path, record: dict[str, Any]) -> Layer:
        return cls(blob, record["digest"], record["size"], record["diff_id"], record["media_type"])


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(entries: list[FileEntry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted({str(Path(e.path).parent) for e in entries} - {"."})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path)
            info.mtime, info.mode = 0, entry.mode
            if entry.data is None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def memory_layer(tar: bytes) -> Layer:
    digest = _digest(tar)
    return Layer(tar, digest, len(tar), digest, TAR)


class _Sink(Protocol):
    def write(self, data: memoryview, /) -> int: ...


class _HashingWriter(io.RawIOBase):
    """Passes writes through to `target` and hashes them (the uncompressed tar's diff_id)."""

    def __init__(self, target: _Sink) -> None:
        self.target, self.sha, self.written = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.written

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.target.write(view)
        self.written += len(view)
        return len(view)


def _walk(root: Path) -> Iterator[Path]:
    """Every path below root, parents before children, names sorted."""
    for name in sorted(os.listdir(root)):
        path = root / name
        yield path
        if path.is_dir() and not path.is_symlink():
            yield from _walk(path)


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def directory_layer(root: Path, blob: Path, clamp_mtime: int | None = None) -> Layer:
    """Stream the tree under `root` into a gzip layer at `blob`, keeping owners, modes and hard links.

    overlayfs marks in an upper directory become OCI whiteouts: a 0/0 character device is `.wh.<name>`,
    an opaque directory gets `.wh..wh..opq`. clamp_mtime: newer mtimes are set to it (pip's files carry
    the build's time; their .pyc files are hash-checked, so the mtime means nothing). Sockets are skipped.
    """
    blob.parent.mkdir(parents=True, exist_ok=True)
    partial = blob.with_suffix(".partial")
    seen_inodes: dict[tuple[int, int], str] = {}
    with open(partial, "wb") as out, gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        hashing = _HashingWriter(gz)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for path in _walk(root):
                name = str(path.relative_to(root))
                st = path.lstat()
                if stat.S_ISSOCK(st.st_mode):
                    continue
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # overlayfs whiteout
                    info = tarfile.TarInfo(str(Path(name).parent / f".wh.{path.name}"))
                    info.mode, info.mtime = 0o644, 0
                    tar.addfile(info)
                    continue
                info = tar.gettarinfo(str(path), name)
                info.uname = info.gname = ""
                if clamp_mtime is not None:
                    info.mtime = min(int(info.mtime), clamp_mtime)
                if info.isreg() and st.st_nlink > 1:
                    first = seen_inodes.setdefault((st.st_dev, st.st_ino), name)
                    if first != name:
                        info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
                if info.isreg():
                    with open(path, "rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)
                if info.isdir() and _is_opaque(path):
                    opaque = tarfile.TarInfo(f"{name}/.wh..wh..opq")
                    opaque.mode, opaque.mtime = 0o644, 0
                    tar.addfile(opaque)
        diff_id = "sha256:" + hashing.sha.hexdigest()
    sha = hashlib.sha256()
    with open(partial, "rb") as data:
        while chunk := data.read(CHUNK):
            sha.update(chunk)
    partial.rename(blob)
    return Layer(blob, "sha256:" + sha.hexdigest(), blob.stat().st_size, diff_id, TAR_GZIP)


def image_config(layers: list[Layer], config: dict[str, Any]) -> bytes:
    """The OCI image config: `config` holds Entrypoint/Cmd/Env/WorkingDir/Labels..."""
    body = {"architecture": "amd64", "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}}
    return json.dumps(body, sort_keys=True).encode()


def _add(tar: tarfile.TarFile, name: str, source: bytes | Path, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.size = 0o644, 0, size
    if isinstance(source, bytes):
        tar.addfile(info, io.BytesIO(source))
    else:
        with open(source, "rb") as data:
            tar.addfile(info, data)


def write_archive(out: IO[bytes], names: tuple[str, ...], layers: list[Layer], config: dict[str, Any]) -> str:
    """An OCI image layout tar holding one image under every name in `names`; returns the manifest digest."""
    config_blob = image_config(layers, config)
    manifest = {
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": _digest(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size} for layer in layers],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = _digest(manifest_blob)
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": MANIFEST, "digest": manifest_digest, "size": len(manifest_blob),
         "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}
        for name in names
    ]}
    blobs: dict[str, tuple[bytes | Path, int]] = {layer.digest: (layer.source, layer.size) for layer in layers}
    blobs[_digest(config_blob)] = (config_blob, len(config_blob))
    blobs[manifest_digest] = (manifest_blob, len(manifest_blob))
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for digest in sorted(blobs):
            source, size = blobs[digest]
            _add(tar, f"blobs/sha256/{digest.split(':', 1)[1]}", source, size)
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        index_blob = json.dumps(index, sort_keys=True).encode()
        _add(tar, "index.json", index_blob, len(index_blob))
        _add(tar, "oci-layout", layout, len(layout))
    return manifest_digest


def oci_archive(names: tuple[str, ...], layer: bytes, entrypoint: list[str], cmd: list[str]) -> bytes:
    """A one-layer image built in memory (the sandbox's small images) as archive bytes."""
    buffer = io.BytesIO()
    write_archive(buffer, names, [memory_layer(layer)],
                  {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"})
    return buffer.getvalue()
