"""Container images without a registry: OCI archives built here, imported with `ctr images import`.

- pause: a static C program that waits for signals and reaps children (what registry.k8s.io/pause does).
- app: Debian's static busybox with its applets linked in, published under the names pods ask for
  (`nginx`, the walkthrough's image, and `busybox`); its default command serves HTTP on :80 so the
  walkthrough's Deployment runs unchanged.
Layers use mtime 0 and sorted entries, so digests only change when the content does.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
APP_IMAGES = ("docker.io/library/nginx:latest", "docker.io/library/busybox:latest")
BUSYBOX = Path("/bin/busybox")
APP_COMMAND = ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]

PAUSE_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction stop = {.sa_handler = quit}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &stop, NULL); sigaction(SIGTERM, &stop, NULL); sigaction(SIGCHLD, &child, NULL);
    for (;;) pause();
}
"""


@dataclass(frozen=True)
class FileEntry:
    path: str  # inside the image, no leading slash
    data: bytes | None = None  # None with link: a symlink
    link: str = ""
    mode: int = 0o755


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


def _blob(blobs: dict[str, bytes], data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest, len(data)


def oci_archive(names: tuple[str, ...], layer: bytes, entrypoint: list[str], cmd: list[str]) -> bytes:
    """An OCI image layout tar holding one image under every name in `names`."""
    blobs: dict[str, bytes] = {}
    layer_digest, layer_size = _blob(blobs, layer)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_size = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size,
         "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}
        for name in names
    ]}
    files = [FileEntry("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), mode=0o644),
             FileEntry("index.json", json.dumps(index, sort_keys=True).encode(), mode=0o644)]
    files += [FileEntry(f"blobs/sha256/{d.split(':', 1)[1]}", data, mode=0o644) for d, data in blobs.items()]
    return layer_tar(files)


def busybox_applets() -> list[str]:
    """Every applet of the host's static busybox: the image gets a complete userland (sh, nc, usleep...)."""
    listing = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout
    return sorted({name for name in listing.split() if "/" not in name and name not in ("[", "[[")})


def build_pause_binary(work_dir: Path) -> bytes:
    source, binary = work_dir / "pause.c", work_dir / "pause"
    if not binary.exists():
        source.write_text(PAUSE_C)
        subprocess.run(["gcc", "-Os", "-static", "-o", str(binary), str(source)], check=True, capture_output=True)
    return binary.read_bytes()


def build_images(work_dir: Path) -> list[Path]:
    """Write pause.tar and app.tar under `work_dir` (reused when present) and return their paths."""
    work_dir.mkdir(parents=True, exist_ok=True)
    pause_tar, app_tar = work_dir / "pause.tar", work_dir / "app.tar"
    if not pause_tar.exists():
        layer = layer_tar([FileEntry("pause", build_pause_binary(work_dir))])
        pause_tar.write_bytes(oci_archive((PAUSE_IMAGE,), layer, ["/pause"], []))
    if not app_tar.exists():
        entries = [FileEntry("bin/busybox", BUSYBOX.read_bytes())]
        entries += [FileEntry(f"bin/{applet}", link="busybox") for applet in busybox_applets() if applet != "busybox"]
        entries += [FileEntry("tmp/.keep", b"", mode=0o644), FileEntry("etc/hosts", b"127.0.0.1 localhost\n", mode=0o644)]
        app_tar.write_bytes(oci_archive(APP_IMAGES, layer_tar(entries), [], APP_COMMAND))
    return [pause_tar, app_tar]
