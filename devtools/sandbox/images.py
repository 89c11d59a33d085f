"""Container images without a registry: OCI archives built here, imported with `ctr images import`.

- pause: a static C program that waits for signals and reaps children (what registry.k8s.io/pause does).
- app: Debian's static busybox with its applets linked in, published under the names pods ask for
  (`nginx`, the walkthrough's image, and `busybox`); its default command serves HTTP on :80 so the
  walkthrough's Deployment runs unchanged.
The OCI layout writer is devtools/oci.py (shared with the product image, devtools/image.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from devtools.oci import FileEntry, layer_tar, oci_archive

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
