"""A small libcni-style runner: execs the plugins of a conflist the way containerd's libcni does.

ADD runs the plugins in order, injecting `cniVersion`, `name` and `prevResult` (the previous
plugin's output), and caches the final result; DEL runs them in reverse with the cached result as
`prevResult` (none when the cache is gone) and removes the cache; CHECK passes the cached result.
Plugins run inside `host_netns` (via nsenter) so their host-side effects never reach the real host.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEBIAN_CNI = Path("/usr/lib/cni")
OUR_BIN = REPO / "plugin-bin"


class PluginError(Exception):
    def __init__(self, plugin: str, command: str, code: int, stdout: str, stderr: str) -> None:
        self.plugin, self.command, self.code, self.stdout, self.stderr = plugin, command, code, stdout, stderr
        try:
            self.error: dict[str, Any] = json.loads(stdout)
        except ValueError:
            self.error = {}
        super().__init__(f"{plugin} {command} exited {code}: {stdout.strip() or stderr.strip()}")


@dataclass(frozen=True)
class Exec:
    """One plugin process: exit code, stdout, stderr and wall time."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Runner:
    cache_dir: Path
    host_netns: str | None = None  # name under /var/run/netns; None = the caller's netns
    bin_dirs: tuple[Path, ...] = (OUR_BIN, DEBIAN_CNI)
    env: dict[str, str] = field(default_factory=dict)
    # (plugin type, command, wall seconds, CPU seconds); CPU is exact only when one plugin runs at a time
    timings: list[tuple[str, str, float, float]] = field(default_factory=list)

    def binary(self, plugin_type: str) -> Path:
        for d in self.bin_dirs:
            if (d / plugin_type).exists():
                return d / plugin_type
        raise FileNotFoundError(f"plugin {plugin_type!r} not in {', '.join(map(str, self.bin_dirs))}")

    def exec_plugin(self, plugin_type: str, command: str, conf: dict[str, Any] | bytes, *, container_id: str = "",
                    netns: str = "", ifname: str = "", args: str = "", extra_env: dict[str, str] | None = None) -> Exec:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_PATH": ":".join(map(str, self.bin_dirs)),
               **self.env, **(extra_env or {})}
        for key, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname), ("CNI_ARGS", args)):
            if value or key in (extra_env or {}):
                env[key] = value
        if extra_env:
            env.update(extra_env)
        cmd = [str(self.binary(plugin_type))]
        if self.host_netns:
            cmd = ["/usr/bin/nsenter", f"--net=/var/run/netns/{self.host_netns}", *cmd]
        data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, input=data, capture_output=True, env=env, timeout=120, check=False)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
        self.timings.append((plugin_type, command, seconds, cpu))
        return Exec(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), seconds)

    def _cache(self, net: str, container_id: str, ifname: str) -> Path:
        return self.cache_dir / f"{net}-{container_id}-{ifname}"

    def _plugin_conf(self, conflist: dict[str, Any], plugin: dict[str, Any], prev: Any) -> dict[str, Any]:
        conf = {**plugin, "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
        conf.pop("capabilities", None)
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def add(self, conflist: dict[str, Any], container_id: str, netns: str, ifname: str = "eth0", args: str = "") -> dict[str, Any]:
        prev = None
        for plugin in conflist["plugins"]:
            r = self.exec_plugin(plugin["type"], "ADD", self._plugin_conf(conflist, plugin, prev),
                                 container_id=container_id, netns=netns, ifname=ifname, args=args)
            if r.code != 0:
                raise PluginError(plugin["type"], "ADD", r.code, r.stdout, r.stderr)
            prev = r.json()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._cache(conflist["name"], container_id, ifname).write_text(json.dumps({"result": prev, "netns": netns, "args": args}))
        assert isinstance(prev, dict)
        return prev

    def cached(self, net: str, container_id: str, ifname: str = "eth0") -> dict[str, Any] | None:
        try:
            return json.loads(self._cache(net, container_id, ifname).read_text())["result"]  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None

    def delete(self, conflist: dict[str, Any], container_id: str, netns: str, ifname: str = "eth0", args: str = "") -> None:
        prev = self.cached(conflist["name"], container_id, ifname)
        for plugin in reversed(conflist["plugins"]):
            r = self.exec_plugin(plugin["type"], "DEL", self._plugin_conf(conflist, plugin, prev),
                                 container_id=container_id, netns=netns, ifname=ifname, args=args)
            if r.code != 0:
                raise PluginError(plugin["type"], "DEL", r.code, r.stdout, r.stderr)
        self._cache(conflist["name"], container_id, ifname).unlink(missing_ok=True)

    def check(self, conflist: dict[str, Any], container_id: str, netns: str, ifname: str = "eth0", args: str = "") -> None:
        prev = self.cached(conflist["name"], container_id, ifname)
        for plugin in conflist["plugins"]:
            r = self.exec_plugin(plugin["type"], "CHECK", self._plugin_conf(conflist, plugin, prev),
                                 container_id=container_id, netns=netns, ifname=ifname, args=args)
            if r.code != 0:
                raise PluginError(plugin["type"], "CHECK", r.code, r.stdout, r.stderr)


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.stdout


def ip_json(*args: str, netns: str | None = None) -> Any:
    out = ip("-j", *args, netns=netns)
    return json.loads(out) if out.strip() else []


def netns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 10000}{os.urandom(3).hex()}"
