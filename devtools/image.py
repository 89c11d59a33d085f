"""The product image (egressgateway:dev) without Docker or a registry: `make image` / `python -m devtools.image`.

Three gzip layers in one OCI archive (build/egressgateway-image.oci.tar), each cached on its own key:
  1. Debian: an mmdebstrap rootfs of bookworm (minbase, like debian:bookworm-slim) with python3,
     iptables, ipset, nftables, iproute2 and conntrack; docs, man pages, apt lists and caches removed; user and
     group 65532 (nonroot). Key: the package list, sources and hooks.
  2. Python dependencies: the wheels pinned with hashes in hack/image-requirements.txt, installed by
     the image's own python3 (pip run in a chroot on an overlayfs over layer 1, offline, from wheels
     downloaded for cp311/manylinux). Key: layer 1 and the lock file.
  3. The project: our wheel, installed the same way over layers 1+2 (pip checks its requirements are
     met by layer 2 and fails, offline, if the lock misses one). Rebuilt every time; a few seconds.
Both overlay steps keep only what pip wrote (the upper directory). SOURCE_DATE_EPOCH makes pip write
hash-checked .pyc files, so their mtimes (clamped) do not matter. The Dockerfile builds the same content.
`lock` rewrites hack/image-requirements.txt from setup.cfg for the image's interpreter.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools import oci

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = REPO_ROOT / "build" / "egressgateway-image.oci.tar"
CACHE = REPO_ROOT / "build" / "image-cache"
LOCK = REPO_ROOT / "hack" / "image-requirements.txt"
# containerd's CRI resolves the manifests' `egressgateway:dev` to this name.
IMAGE_NAME = "docker.io/library/egressgateway:dev"
BUILDER_VERSION = "1"  # bump when a step below changes what it produces

SUITE = "bookworm"
PYTHON_VERSION = "3.11"  # bookworm's python3
GLIBC_VERSION = (2, 36)  # bookworm's libc6: the newest manylinux tag its python accepts
PACKAGES = ("python3", "iptables", "ipset", "nftables", "iproute2", "conntrack")
SOURCES = (f"deb http://deb.debian.org/debian {SUITE} main",
           f"deb http://deb.debian.org/debian {SUITE}-updates main",
           f"deb http://deb.debian.org/debian-security {SUITE}-security main")
DPKG_OPTIONS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
                "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/locale/*",
                "path-exclude=/usr/share/info/*")
NONROOT_UID = 65532
PASSWD_LINE = f"nonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/nonexistent:/usr/sbin/nologin"
GROUP_LINE = f"nonroot:x:{NONROOT_UID}:"
# Run inside the finished chroot ($1): no apt state, no host files, the nonroot account.
CUSTOMIZE_HOOKS = ('rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old "$1"/var/log/*',
                   f'echo "{PASSWD_LINE}" >> "$1/etc/passwd"', f'echo "{GROUP_LINE}" >> "$1/etc/group"')
HOST_FILES = ("etc/resolv.conf", "etc/hostname")  # mmdebstrap copies the host's; the runtime mounts its own
SOURCE_DATE_EPOCH = 1700000000  # clamps pip layers' mtimes (2023-11-14)

CONFIG = {
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE=1"],
    "WorkingDir": "/",
    "Cmd": ["egress-controller", "--help"],
    "Labels": {"org.opencontainers.image.title": "egressgateway",
               "org.opencontainers.image.base.name": f"debian:{SUITE} (mmdebstrap minbase)"},
}
BUILD_DIR = "tmp/egw-build"  # inside the chroot: pip, the wheels, the lock and our wheel (a bind mount)
SOURCE_FILES = ("setup.cfg", "pyproject.toml", "README.md")
SOURCE_DIRS = ("egress_cni", "webhook")


def wheel_tags() -> list[str]:
    """pip options selecting wheels the image's python3 can load (not the host's interpreter's)."""
    platforms = [f"manylinux_{GLIBC_VERSION[0]}_{minor}_x86_64" for minor in range(GLIBC_VERSION[1], 16, -1)]
    options = ["--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION]
    for abi in (f"cp{PYTHON_VERSION.replace('.', '')}", "abi3", "none"):
        options += ["--abi", abi]
    for platform in [*platforms, "manylinux2014_x86_64", "linux_x86_64"]:
        options += ["--platform", platform]
    return options


def debian_key() -> str:
    recipe = {"suite": SUITE, "packages": PACKAGES, "sources": SOURCES, "dpkg": DPKG_OPTIONS,
              "hooks": CUSTOMIZE_HOOKS, "host_files": HOST_FILES, "builder": BUILDER_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def deps_key(debian: str, lock: str) -> str:
    return hashlib.sha256(f"{debian}\n{BUILDER_VERSION}\n{lock}".encode()).hexdigest()[:16]


def lock_lines(report: dict[str, Any]) -> list[str]:
    """`name==version --hash=sha256:...` for every wheel in a `pip install --report`."""
    lines = []
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{name.lower()}=={version} --hash=sha256:{digest}")
    return sorted(lines)


@dataclass
class Timings:
    """Prints each step's time as it ends; `summary` lists them again."""

    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            self.steps.append((name, elapsed))
            print(f"image: {name:<34} {elapsed:7.1f} s", flush=True)

    def summary(self) -> str:
        return "\n".join(f"  {name:<34} {elapsed:7.1f} s" for name, elapsed in self.steps)


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a build command; on failure raise with its output (the build's logs are its errors)."""
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed (exit {result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result  # type: ignore[no-any-return]


def _load_layer(directory: Path) -> oci.Layer | None:
    record = directory / "layer.json"
    if not record.exists():
        return None
    return oci.Layer.from_json(directory / "layer.tar.gz", json.loads(record.read_text()))


def _save_layer(directory: Path, layer: oci.Layer) -> oci.Layer:
    (directory / "layer.json").write_text(json.dumps(layer.to_json(), sort_keys=True))
    return layer


def _publish(partial: Path, directory: Path) -> oci.Layer:
    """Move a finished cache entry into place (a crash before this leaves only a .partial to redo)."""
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    layer = _load_layer(directory)
    assert layer is not None
    return layer


def check_interpreter(rootfs: Path) -> None:
    """The wheels are chosen for PYTHON_VERSION and GLIBC_VERSION: fail clearly if Debian moved on."""
    probe = "import platform, sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}', platform.libc_ver()[1])"
    found = run(["chroot", str(rootfs), "/usr/bin/python3", "-c", probe]).stdout.split()
    expected = [PYTHON_VERSION, f"{GLIBC_VERSION[0]}.{GLIBC_VERSION[1]}"]
    if found != expected:
        raise RuntimeError(f"{SUITE} rootfs has python/glibc {found}, devtools/image.py expects {expected}")


def debian_layer(cache: Path) -> tuple[Path, oci.Layer]:
    """Layer 1 and its rootfs (kept: the lower directory of the pip steps)."""
    directory = cache / f"debian-{debian_key()}"
    if (layer := _load_layer(directory)) is not None:
        return directory / "rootfs", layer
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap is not installed (hack/install-deps.sh installs it)")
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    argv = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory", f"--include={','.join(PACKAGES)}"]
    argv += [f"--dpkgopt={option}" for option in DPKG_OPTIONS]
    argv += [f"--customize-hook={hook}" for hook in CUSTOMIZE_HOOKS]
    run([*argv, SUITE, str(partial / "rootfs"), *SOURCES], env={**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)})
    rootfs = partial / "rootfs"
    for name in HOST_FILES:
        (rootfs / name).unlink(missing_ok=True)
    for entry in (rootfs / "dev").iterdir():  # device nodes: the runtime mounts its own /dev
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    check_interpreter(rootfs)
    _save_layer(partial, oci.directory_layer(rootfs, partial / "layer.tar.gz"))
    return directory / "rootfs", _publish(partial, directory)


@contextlib.contextmanager
def overlay_chroot(lowers: list[Path], upper: Path, tools: Path) -> Iterator[Path]:
    """An overlayfs root over `lowers` writing into `upper`, with /dev, /proc and `tools` at /BUILD_DIR.

    On exit the mount point directories are removed from `upper` again, so it holds only what ran inside wrote.
    """
    shutil.rmtree(upper, ignore_errors=True)
    work, merged = upper.with_name(upper.name + ".work"), upper.with_name(upper.name + ".merged")
    for directory in (upper, work, merged):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    options = f"lowerdir={':'.join(str(p) for p in lowers)},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)])
    mounted = [merged]
    try:
        (merged / BUILD_DIR).mkdir(parents=True)
        for source, target in ((Path("/dev"), merged / "dev"), (tools, merged / BUILD_DIR)):
            run(["mount", "--bind", str(source), str(target)])
            mounted.append(target)
        run(["mount", "-t", "proc", "proc", str(merged / "proc")])
        mounted.append(merged / "proc")
        yield merged
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        merged.rmdir()
    for parent in (upper / BUILD_DIR, *(upper / BUILD_DIR).parents):
        if parent == upper:
            break
        with contextlib.suppress(OSError):
            parent.rmdir()  # only when empty: a copied-up /tmp that holds nothing else


def chroot_pip(merged: Path, args: list[str]) -> None:
    """The image's python3 running the host venv's pip (copied into the tools dir), offline."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "PYTHONPATH": f"/{BUILD_DIR}/pip-run",
           "PYTHONDONTWRITEBYTECODE": "1", "PIP_NO_INDEX": "1", "PIP_NO_CACHE_DIR": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore", "PIP_BREAK_SYSTEM_PACKAGES": "1"}
    run(["chroot", str(merged), "/usr/bin/python3", "-m", "pip", "install", "--no-warn-script-location",
         "--find-links", f"/{BUILD_DIR}/wheels", *args], env=env)


def prepare_tools(cache: Path, lock_text: str) -> Path:
    """cache/tools: pip (from this venv) and the lock; the wheels arrive with the dependencies layer."""
    tools = cache / "tools"
    (tools / "wheels").mkdir(parents=True, exist_ok=True)
    import pip  # the venv's pip: pure Python, runs under the image's python3 too

    pip_copy = tools / "pip-run" / "pip"
    if not pip_copy.exists():
        shutil.copytree(Path(pip.__file__).parent, pip_copy, ignore=shutil.ignore_patterns("__pycache__"))
    (tools / "requirements.txt").write_text(lock_text)
    return tools


def deps_layer(cache: Path, rootfs: Path, tools: Path, lock_text: str) -> tuple[Path, oci.Layer]:
    directory = cache / f"deps-{deps_key(rootfs.parent.name, lock_text)}"
    if (layer := _load_layer(directory)) is not None:
        return directory / "upper", layer
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q", "-d", str(tools / "wheels"),
         *wheel_tags(), "-r", str(tools / "requirements.txt")])
    with overlay_chroot([rootfs], partial / "upper", tools) as merged:
        chroot_pip(merged, ["--require-hashes", "-r", f"/{BUILD_DIR}/requirements.txt"])
    _save_layer(partial, oci.directory_layer(partial / "upper", partial / "layer.tar.gz", SOURCE_DATE_EPOCH))
    return directory / "upper", _publish(partial, directory)


def project_wheel(cache: Path, tools: Path) -> str:
    """Build our wheel from a copy of the sources (nothing written into the checkout); returns its file name."""
    source = cache / "src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for name in SOURCE_FILES:
        shutil.copy2(REPO_ROOT / name, source / name)
    for name in SOURCE_DIRS:
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tools / "project"
    shutil.rmtree(out, ignore_errors=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        env={**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}, cwd=source)
    (wheel,) = out.glob("*.whl")
    return wheel.name


def project_layer(cache: Path, lowers: list[Path], tools: Path, wheel: str) -> oci.Layer:
    directory = cache / "project"
    with overlay_chroot(lowers, directory / "upper", tools) as merged:
        chroot_pip(merged, [f"/{BUILD_DIR}/project/{wheel}"])
    return _save_layer(directory, oci.directory_layer(directory / "upper", directory / "layer.tar.gz", SOURCE_DATE_EPOCH))


def build(archive: Path = ARCHIVE, cache: Path = CACHE) -> Path:
    """Write the image archive (layers reused from `cache` when their keys match); returns its path."""
    if os.geteuid() != 0:
        raise PermissionError("building the image needs root (mmdebstrap --mode=root, overlayfs, chroot)")
    timings = Timings()
    lock_text = LOCK.read_text()
    with timings.step("debian rootfs layer (mmdebstrap)"):
        rootfs, debian = debian_layer(cache)
    tools = prepare_tools(cache, lock_text)
    with timings.step("python dependencies layer (pinned)"):
        deps_upper, deps = deps_layer(cache, rootfs, tools, lock_text)
    with timings.step("project wheel"):
        wheel = project_wheel(cache, tools)
    with timings.step("project layer"):
        project = project_layer(cache, [deps_upper, rootfs], tools, wheel)
    with timings.step("archive"):
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".partial")
        with open(partial, "wb") as out:
            digest = oci.write_archive(out, (IMAGE_NAME,), [debian, deps, project], CONFIG)
        partial.rename(archive)
    size = archive.stat().st_size / 1e6
    print(f"image: {IMAGE_NAME} {digest[:19]} -> {archive} ({size:.1f} MB; layers "
          f"{debian.size / 1e6:.1f} + {deps.size / 1e6:.1f} + {project.size / 1e6:.2f} MB)")
    print("image: time per step\n" + timings.summary())
    return archive


def install_requires(setup_cfg: Path = REPO_ROOT / "setup.cfg") -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    return [line.strip() for line in parser["options"]["install_requires"].splitlines() if line.strip()]


def write_lock(lock: Path = LOCK) -> None:
    """Resolve setup.cfg's install_requires for the image's interpreter and pin every wheel by hash."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
             "--report", str(report), *wheel_tags(), *install_requires()])
        lines = lock_lines(json.loads(report.read_text()))
    header = ("# The image's Python dependencies, pinned with hashes for cp311 manylinux x86_64 (bookworm's python3).\n"
              "# Regenerate after changing install_requires: python -m devtools.image lock\n")
    lock.write_text(header + "\n".join(lines) + "\n")
    print(f"image: {len(lines)} pinned wheels -> {lock}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.image", description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", default="build", choices=("build", "lock"))
    parser.add_argument("--output", type=Path, default=ARCHIVE)
    args = parser.parse_args(argv)
    try:
        if args.command == "lock":
            write_lock()
        else:
            build(args.output)
    except (PermissionError, RuntimeError) as error:
        sys.exit(f"image: {error}")


if __name__ == "__main__":
    main()
