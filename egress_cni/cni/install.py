"""`egress-cni install|uninstall`: what the DaemonSet's init container does on the node.

install:
  1. copies a self-contained runtime (this interpreter + trimmed stdlib + shared libpython + the
     egress_cni package) into <runtime-dir>/<version>-<digest>/ and switches <runtime-dir>/current
     to it with an atomic rename: in-flight plugin runs keep their old tree, new runs get the new one;
  2. writes <bin-dir>/egress-cni, a /bin/sh wrapper that execs only that runtime's python with
     -I -S (never the host's Python or site-packages), via temp file + rename (no "text file busy");
  3. appends our plugin to the node's primary conflist (first *.conflist/*.conf/*.json in
     lexicographic order, as containerd picks it), idempotently, via temp file + rename.
uninstall removes our entry from every conflist, the wrapper and the runtime
(egress_cni/lowlevel/cnifiles.py, shared with the agent's uninstall).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import egress_cni
from egress_cni.lowlevel.cnifiles import CONF_SUFFIXES, PLUGIN_TYPE, remove, without_plugin, write_atomic
from egress_cni.lowlevel.command import CommandError, run

__all__ = ["CONF_SUFFIXES", "PLUGIN_TYPE", "install", "main", "uninstall", "with_plugin", "without_plugin", "write_atomic"]
TRIM = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "lib2to3", "__phello__", "unittest"}
PACKAGE_FILES = ("__init__.py", "registry.py", "py.typed")
PACKAGE_DIRS = ("cni", "lowlevel")  # with PACKAGE_FILES all the plugin imports (.importlinter holds it to that)
WRAPPER = """#!/bin/sh
# egressgateway CNI plugin (written by `egress-cni install`): runs the private runtime only.
R={runtime}/current
LD_LIBRARY_PATH="$R/lib" exec "$R/bin/python3" -I -S -c 'from egress_cni.cni.main import main; main()' "$@"
"""


def _stdlib_dir() -> Path:
    return Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"


# Extension modules the plugin loads; their non-glibc libraries (e.g. libffi for _ctypes) travel along.
PLUGIN_EXTENSIONS = ("_ctypes", "_json", "_socket", "fcntl", "_struct", "_sha1", "_posixsubprocess", "select")
GLIBC = ("linux-vdso", "libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "ld-linux", "libutil.so")


def _shared_libs(binary: Path) -> list[Path]:
    """Libraries outside glibc that the interpreter and the plugin's extension modules load
    (pyenv-style builds link a shared libpython; _ctypes needs libffi); nodes may lack them."""
    dynload = _stdlib_dir() / "lib-dynload"
    objects = [binary, *(p for name in PLUGIN_EXTENSIONS for p in dynload.glob(f"{name}.*.so"))]
    libs: dict[str, Path] = {}
    for obj in objects:
        try:
            out = run(["ldd", str(obj)])
        except CommandError:  # e.g. "not a dynamic executable": nothing to carry along
            continue
        for line in out.splitlines():
            name, sep, rest = line.strip().partition(" => ")
            target = rest.split(" (")[0].strip()
            if sep and target.startswith("/") and not name.startswith(GLIBC):
                libs[name] = Path(target)
    return list(libs.values())


def build_runtime(runtime_dir: Path) -> Path:
    """Copy interpreter + stdlib + our package into a fresh versioned dir; returns it."""
    package_root = Path(egress_cni.__file__).resolve().parent
    digest = _tree_digest(package_root)
    version_dir = runtime_dir / f"{egress_cni.__version__}-{digest}"
    if (version_dir / ".complete").exists():
        return version_dir
    staging = runtime_dir / f".staging-{os.getpid()}-{time.monotonic_ns()}"
    (staging / "bin").mkdir(parents=True)
    (staging / "lib").mkdir()
    binary = Path(os.path.realpath(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"))
    shutil.copy2(binary, staging / "bin" / "python3")
    for lib in _shared_libs(binary):
        shutil.copy2(os.path.realpath(lib), staging / "lib" / lib.name)  # under the soname the loader asks for
    stdlib = staging / "lib" / _stdlib_dir().name
    shutil.copytree(_stdlib_dir(), stdlib, symlinks=True, ignore=_ignore_stdlib)
    target = stdlib / "egress_cni"  # on sys.path under -I -S, unlike site-packages
    target.mkdir()
    for name in PACKAGE_FILES:
        if (package_root / name).exists():
            shutil.copy2(package_root / name, target / name)
    for sub in PACKAGE_DIRS:
        shutil.copytree(package_root / sub, target / sub, ignore=shutil.ignore_patterns("__pycache__"))
    import compileall

    compileall.compile_dir(str(target), quiet=1)  # pyc next to the source: no write attempts at pod start
    (staging / ".complete").write_text(f"{egress_cni.__version__} {digest}\n")
    if version_dir.exists():  # an incomplete earlier attempt
        shutil.rmtree(version_dir)
    os.rename(staging, version_dir)
    return version_dir


def _ignore_stdlib(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == _stdlib_dir()
    return {n for n in names if (top and (n in TRIM or n.startswith("config-")))}


def _tree_digest(root: Path) -> str:
    import hashlib

    h = hashlib.sha256(sys.version.encode())
    files = [root / n for n in PACKAGE_FILES if (root / n).exists()] + [p for sub in PACKAGE_DIRS for p in (root / sub).rglob("*.py")]
    for path in sorted(files):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def switch_current(runtime_dir: Path, version_dir: Path) -> None:
    """Point `current` at version_dir atomically; keep the previous tree for in-flight runs, drop older ones."""
    link = runtime_dir / "current"
    previous = os.readlink(link) if link.is_symlink() else None
    tmp = runtime_dir / f".current-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(version_dir.name, tmp)
    os.replace(tmp, link)
    for old in runtime_dir.iterdir():
        if old.is_dir() and not old.is_symlink() and not old.name.startswith(".") and old.name not in (version_dir.name, previous):
            shutil.rmtree(old, ignore_errors=True)


def primary_conflist(conf_dir: Path) -> Path | None:
    files = sorted(p for p in conf_dir.iterdir() if p.suffix in CONF_SUFFIXES and p.is_file() and not p.name.startswith("."))
    return files[0] if files else None


def with_plugin(conf: dict[str, Any], plugin: dict[str, Any]) -> dict[str, Any]:
    """The conflist with our entry last (replacing an older entry of ours); a single-plugin .conf becomes a list."""
    if "plugins" not in conf:
        single = {k: v for k, v in conf.items() if k not in ("cniVersion", "name")}
        conf = {"cniVersion": conf.get("cniVersion", "1.0.0"), "name": conf.get("name", "k8s-pod-network"), "plugins": [single]}
    plugins = [p for p in conf["plugins"] if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    return {**conf, "plugins": [*plugins, plugin]}


def install(args: argparse.Namespace) -> int:
    bin_dir, conf_dir, runtime_dir = Path(args.bin_dir), Path(args.conf_dir), Path(args.runtime_dir)
    plugin = {"type": PLUGIN_TYPE, **json.loads(args.plugin_config)}
    for d in (bin_dir, conf_dir, runtime_dir):
        d.mkdir(parents=True, exist_ok=True)
    version_dir = build_runtime(runtime_dir)
    switch_current(runtime_dir, version_dir)
    host_runtime = args.host_runtime_dir or str(runtime_dir.resolve())  # the wrapper runs in the host's mount ns
    write_atomic(bin_dir / PLUGIN_TYPE, WRAPPER.format(runtime=host_runtime), 0o755)
    deadline = time.monotonic() + args.wait_seconds
    primary = primary_conflist(conf_dir)
    while primary is None and time.monotonic() < deadline:
        time.sleep(1)
        primary = primary_conflist(conf_dir)
    if primary is None:
        print(f"no primary CNI config (*.conflist, *.conf, *.json) in {conf_dir} after {args.wait_seconds}s", file=sys.stderr)
        return 1
    conf = json.loads(primary.read_text())
    updated = with_plugin(conf, plugin)
    target = primary.with_suffix(".conflist") if primary.suffix == ".conf" else primary
    if updated != conf or target != primary:
        write_atomic(target, json.dumps(updated, indent=2) + "\n")
        if target != primary:
            primary.unlink()
    print(f"installed runtime {version_dir}, plugin {bin_dir / PLUGIN_TYPE}, chained in {target}", file=sys.stderr)
    return 0


def uninstall(args: argparse.Namespace) -> int:
    remove(Path(args.conf_dir), Path(args.bin_dir), None if args.keep_runtime else Path(args.runtime_dir))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="egress-cni", description="install or remove the egressgateway CNI plugin on this node")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("install", "uninstall"):
        p = sub.add_parser(name)
        p.add_argument("--bin-dir", default="/opt/cni/bin", help="CNI bin dir the runtime searches")
        p.add_argument("--conf-dir", default="/etc/cni/net.d", help="CNI config dir")
        p.add_argument("--runtime-dir", default="/opt/egressgateway/cni", help="where the private Python runtime lives")
        if name == "install":
            p.add_argument("--plugin-config", default="{}", help="JSON object merged into our conflist entry (e.g. mode, hijackCIDR)")
            p.add_argument("--wait-seconds", type=float, default=0, help="wait this long for the primary CNI to write its conflist")
            p.add_argument("--host-runtime-dir", default="",
                           help="--runtime-dir as the host sees it (e.g. /opt/egressgateway/cni when the init container mounts it at /host/opt/...)")
        else:
            p.add_argument("--keep-runtime", action="store_true")
    args = parser.parse_args(argv)
    try:
        extra = json.loads(getattr(args, "plugin_config", "{}"))
    except ValueError as exc:
        parser.error(f"--plugin-config is not JSON: {exc}")
    if not isinstance(extra, dict):
        parser.error("--plugin-config must be a JSON object")
    return install(args) if args.command == "install" else uninstall(args)
