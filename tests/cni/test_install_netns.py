"""`egress-cni install` into a fresh tree, then a real chain run from it with no python3 on PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from egress_cni import registry
from tests.cni.lab import Lab
from tests.cni.runner import DEBIAN_CNI, REPO

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("node")
    (root / "etc/cni/net.d").mkdir(parents=True)
    primary = {"cniVersion": "1.0.0", "name": "primary", "type": "bridge", "bridge": "egwbr1", "isGateway": True,
               "ipam": {"type": "host-local", "subnet": "10.44.0.0/24", "dataDir": str(root / "ipam")}}
    (root / "etc/cni/net.d/10-primary.conf").write_text(json.dumps(primary))
    ours = {"mode": "overlay", "stateDir": str(root / "state"), "registryDir": str(root / "registry"), "nodeName": "n1"}
    cmd = [sys.executable, "-c", "from egress_cni.cni.main import main; main()", "install", "--bin-dir", str(root / "opt/cni/bin"),
           "--conf-dir", str(root / "etc/cni/net.d"), "--runtime-dir", str(root / "opt/egressgateway/cni"), "--plugin-config", json.dumps(ours)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    for plugin in ("bridge", "host-local", "loopback"):
        (root / "opt/cni/bin" / plugin).symlink_to(DEBIAN_CNI / plugin)
    return root


@pytest.fixture
def bare_path(tmp_path: Path) -> str:
    """A PATH holding only sh and a few coreutils: no python anywhere."""
    bindir = tmp_path / "bare-bin"
    bindir.mkdir()
    for tool in ("sh", "cat", "ls", "env"):
        (bindir / tool).symlink_to(f"/bin/{tool}" if Path(f"/bin/{tool}").exists() else f"/usr/bin/{tool}")
    return str(bindir)


LAB_PREFIX = "egwi"  # tests/cni/conftest.py


def test_install_writes_wrapper_runtime_and_chains_the_primary_conflist(installed: Path) -> None:
    wrapper = (installed / "opt/cni/bin/egress-cni").read_text()
    assert wrapper.startswith("#!/bin/sh\n") and " -I -S " in wrapper and "python3" in wrapper
    current = installed / "opt/egressgateway/cni/current"
    assert current.is_symlink() and (current / ".complete").exists()
    stdlib = next((current / "lib").glob("python3.*"))
    assert not any((stdlib / d).exists() for d in ("test", "idlelib", "tkinter", "ensurepip", "site-packages"))
    assert (stdlib / "egress_cni/cni/main.py").exists()
    assert not (installed / "etc/cni/net.d/10-primary.conf").exists(), "a .conf becomes a .conflist"
    conflist = json.loads((installed / "etc/cni/net.d/10-primary.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "egress-cni"] and conflist["cniVersion"] == "1.0.0"


def test_runtime_uses_only_its_own_interpreter_and_libpython(installed: Path, bare_path: str) -> None:
    current = installed / "opt/egressgateway/cni/current"
    code = "import sys, _ctypes; print(sys.prefix); print(open('/proc/self/maps').read())"
    out = subprocess.run([str(current / "bin/python3"), "-I", "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": bare_path, "LD_LIBRARY_PATH": str(current / "lib")}).stdout
    prefix, maps = out.split("\n", 1)
    assert Path(prefix).resolve() == current.resolve()
    libs = {line.split()[-1] for line in maps.splitlines() if "libpython" in line or "libffi" in line}
    assert any("libpython" in p for p in libs) and any("libffi" in p for p in libs), libs
    assert all(p.startswith(str(current.resolve())) for p in libs), libs


def test_installed_plugin_runs_a_real_chain_without_python_on_path(installed: Path, bare_path: str, lab: Lab) -> None:
    assert subprocess.run(["sh", "-c", "command -v python3"], env={"PATH": bare_path}, capture_output=True, check=False).returncode != 0
    lab.runner.bin_dirs = (installed / "opt/cni/bin",)
    lab.runner.env = {"PATH": bare_path}
    version = lab.runner.exec_plugin("egress-cni", "VERSION", b'{"cniVersion":"1.0.0"}')
    assert version.code == 0 and "1.1.0" in version.json()["supportedVersions"], version.stderr
    conflist = json.loads((installed / "etc/cni/net.d/10-primary.conflist").read_text())
    _, path = lab.pod()
    result = lab.runner.add(conflist, "inst1", path, args="IgnoreUnknown=1;K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_UID=c")
    ep = registry.read_endpoint(str(installed / "registry"), "inst1_eth0")
    assert ep is not None and ep.pod == "b" and ep.ipv4 == (result["ips"][0]["address"].split("/")[0],)
    lab.runner.delete(conflist, "inst1", path)
    assert registry.list_endpoints(str(installed / "registry")) == []


def test_runtime_upgrade_is_atomic_while_the_plugin_keeps_running(installed: Path, bare_path: str) -> None:
    import shutil
    import threading

    from egress_cni.cni import install

    runtime = installed / "opt/egressgateway/cni"
    old = runtime / os.readlink(runtime / "current")
    new = runtime / "0.0.0-upgrade"
    shutil.copytree(old, new, symlinks=True)
    wrapper = str(installed / "opt/cni/bin/egress-cni")
    failures: list[str] = []
    stop = threading.Event()

    def plugin_calls() -> None:
        while not stop.is_set():
            p = subprocess.run([wrapper], input=b"{}", env={"PATH": bare_path, "CNI_COMMAND": "VERSION"}, capture_output=True, check=False)
            if p.returncode != 0:
                failures.append(p.stderr.decode())

    workers = [threading.Thread(target=plugin_calls) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for i in range(40):
            install.switch_current(runtime, new if i % 2 == 0 else old)
    finally:
        stop.set()
        for w in workers:
            w.join()
    install.switch_current(runtime, old)
    shutil.rmtree(new, ignore_errors=True)
    assert failures == []


def test_reinstall_is_idempotent_and_uninstall_undoes_it(installed: Path) -> None:
    # last in this module: it removes the shared installation
    args = ["--bin-dir", str(installed / "opt/cni/bin"), "--conf-dir", str(installed / "etc/cni/net.d"),
            "--runtime-dir", str(installed / "opt/egressgateway/cni")]
    before = os.readlink(installed / "opt/egressgateway/cni/current")
    run = [sys.executable, "-c", "from egress_cni.cni.main import main; main()"]
    subprocess.run([*run, "install", *args, "--plugin-config", '{"mode": "overlay"}'], check=True, cwd=REPO, capture_output=True)
    assert os.readlink(installed / "opt/egressgateway/cni/current") == before
    conflist = json.loads((installed / "etc/cni/net.d/10-primary.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "egress-cni"] and conflist["plugins"][1] == {"type": "egress-cni", "mode": "overlay"}
    subprocess.run([*run, "uninstall", *args], check=True, cwd=REPO, capture_output=True)
    conflist = json.loads((installed / "etc/cni/net.d/10-primary.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["bridge"]
    assert not (installed / "opt/cni/bin/egress-cni").exists() and not (installed / "opt/egressgateway/cni").exists()
