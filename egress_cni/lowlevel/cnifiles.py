"""The node's CNI files that are ours: our entry in the conflists, the wrapper, the private runtime.

Standard library only, so both sides that touch them share one definition: `egress-cni install|uninstall`
(egress_cni/cni/install.py, the DaemonSet's init container) and the agent's uninstall on the chart's
pre-delete signal (egress_cni/agent/uninstall.py), which may not import the plugin's package
(.importlinter, "daemons"). Every write is a temp file + rename: the runtime never reads half a conflist.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egress_cni.lowlevel.netlink import RT_TABLE_MAIN

PLUGIN_TYPE = "egress-cni"
CONF_SUFFIXES = (".conflist", ".conf", ".json")


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def without_plugin(conf: dict[str, Any]) -> dict[str, Any]:
    """The conflist without our entry (a single-plugin .conf is never ours: install makes it a list)."""
    if "plugins" not in conf:
        return conf
    return {**conf, "plugins": [p for p in conf["plugins"] if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]}


@dataclass(frozen=True)
class UnderlayHost:
    """What the plugin puts in the host netns for underlay pods: veths named `<prefix><hash>` and,
    with a `hostRuleTable` other than main, the rule `pref <priority> lookup <table>` and that
    table's routes (cni/underlay.py)."""

    veth_prefix: str
    table: int = RT_TABLE_MAIN
    priority: int = 1000


def _configs(conf_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every CNI config of `conf_dir` that parses as an object, with its path."""
    for path in sorted(conf_dir.iterdir()) if conf_dir.is_dir() else []:
        if path.suffix not in CONF_SUFFIXES or not path.is_file() or path.name.startswith("."):
            continue
        try:
            conf = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not a config we could have written to
        if isinstance(conf, dict):
            yield path, conf


def plugin_entries(conf_dir: Path) -> list[dict[str, Any]]:
    """Our plugin's entries in every conflist of `conf_dir` (what they configured, e.g. its host
    rule table), read before `remove` takes them out."""
    return [p for _, conf in _configs(conf_dir) if isinstance(conf.get("plugins"), list)
            for p in conf["plugins"] if isinstance(p, dict) and p.get("type") == PLUGIN_TYPE]


def remove(conf_dir: Path, bin_dir: Path, runtime_dir: Path | None) -> list[str]:
    """Take our entry out of every conflist in `conf_dir`, delete the wrapper in `bin_dir` and the
    runtime tree `runtime_dir` (None: keep it). Idempotent; returns what it changed, for the log."""
    changed: list[str] = []
    for path, conf in _configs(conf_dir):
        updated = without_plugin(conf)
        if updated != conf:
            write_atomic(path, json.dumps(updated, indent=2) + "\n")
            changed.append(str(path))
    wrapper = bin_dir / PLUGIN_TYPE
    if wrapper.exists() or wrapper.is_symlink():
        wrapper.unlink()
        changed.append(str(wrapper))
    if runtime_dir is not None and runtime_dir.exists():
        shutil.rmtree(runtime_dir)
        changed.append(str(runtime_dir))
    return changed
