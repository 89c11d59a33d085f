"""Run a program and hand back its output: the one module of the product that starts processes.

Its callers are the agent's dataplane (iptables/ip6tables, ipset, conntrack through
egress_cni.dataplane.xtables), the CNI plugin (iptables-restore inside a pod with replyViaVeth) and the
plugin's installer (ldd). The plugin imports this module only on the path that needs it: `subprocess`
costs pod-start time. .importlinter keeps `subprocess` here and the callers to the apply side.
"""

from __future__ import annotations

import subprocess


class CommandError(RuntimeError):
    """A program exited non-zero; the message names the command, the code, its stderr and how its input began."""

    def __init__(self, cmd: list[str], code: int, stderr: str, stdin: str = "") -> None:
        first_lines = "\n".join(stdin.splitlines()[:20])
        super().__init__(f"{' '.join(cmd)} exited {code}: {stderr.strip()}" + (f"\ninput began:\n{first_lines}" if stdin else ""))
        self.cmd = cmd
        self.code = code
        self.stderr = stderr


def run(cmd: list[str], stdin: str | None = None, timeout: float = 60) -> str:
    """stdout of `cmd` fed `stdin`; CommandError when it exits non-zero, OSError when it cannot start,
    subprocess.TimeoutExpired after `timeout` seconds."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stderr, stdin or "")
    return proc.stdout
