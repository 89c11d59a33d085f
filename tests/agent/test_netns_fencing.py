"""Kernel fencing and probe before claim (issue 13), in namespaces the tests create.

IPv4 EIPs live on the EIP holder, a TUN device the agent holds open: SIGKILLed, the agent's
descriptor closes and the kernel deletes the device with its addresses (and the ARP answers) at
once. They also carry a valid lifetime renewed every 100 ms from a thread of its own: a frozen
(SIGSTOPped) agent stops renewing and the kernel removes them when it runs out. SIGTERM hands them
over: they stay through a restart, which adopts and renews them, and expire soon after if no agent
comes back; a parent link without carrier releases.
`address_in_use` sees an EIP that another namespace holds.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import pytest

from egress_cni.agent.peers import HANDOVER, RESTART_GRACE
from tests.agent.topology import EIP4, PYTHON, ROOT, Topology, sh

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

# Probes the EIP on the segment from another node until nobody answers; prints that epoch time.
UNANSWERED = """
import sys, time
from egress_cni.api.net import parse_ip
from egress_cni.dataplane.probe import address_in_use
ip, deadline = parse_ip(sys.argv[1]), time.time() + float(sys.argv[2])
print("ready", flush=True)
while time.time() < deadline:
    if not address_in_use("eth0", ip, attempts=1, interval=0.02):
        print(time.time(), flush=True)
        sys.exit(0)
sys.exit(1)
"""


def start_agent(t: Topology, n: int, *extra: str) -> subprocess.Popen[str]:
    log = open(t.dir / f"agent-node{n}.log", "a")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(t.agent_args(n) + list(extra), stdout=log, stderr=log, text=True, cwd=ROOT)
    t.agents[n] = proc
    t.procs.append(proc)
    return proc


def holds(t: Topology, n: int, ip: str = EIP4) -> bool:
    out = t.exec_in(t.node(n), "ip", "-o", "addr", "show").stdout  # any link: the parent or the holder
    return f" {ip}/" in out


def wait_for(cond: object, timeout: float, every: float = 0.02) -> float | None:
    """Poll `cond` until true; the monotonic time it first was, or None at the deadline."""
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        time.sleep(every)
    return None


def gateway(t: Topology, *extra: str) -> subprocess.Popen[str]:
    """node2 serves policy web (pods p1a, p2a): its agent runs until it holds the EIP."""
    t.build()
    proc = start_agent(t, 2, *extra)
    assert wait_for(lambda: holds(t, 2), 60) is not None, t.agent_log(2)
    return proc


@pytest.mark.parametrize(("sig", "lifetime", "bound"), [
    (signal.SIGKILL, 1, 0.5),  # the holder dies with the process: at once (0.5 s: a loaded machine's polling)
    (signal.SIGSTOP, 1, 1.6),  # descriptors stay open: the lifetime, counted in whole seconds, up to a tick late
    (signal.SIGSTOP, 2, 2.6),
])
def test_a_dead_or_frozen_agent_is_fenced_by_the_kernel(sig: signal.Signals, lifetime: int, bound: float) -> None:
    t = Topology(pods={1: ["a"]})
    try:
        proc = gateway(t, "--eip-lifetime-seconds", str(lifetime))
        start_agent(t, 1)  # steers pod p1a to node2
        assert t.wait_probe(1, "a", EIP4) == EIP4, t.agent_log(2)
        assert "egress.eip" in t.exec_in(t.node(2), "ip", "-o", "addr", "show", "dev", "egress.eip").stdout
        prober = subprocess.Popen(["ip", "netns", "exec", t.node(3), PYTHON, "-c", UNANSWERED, EIP4, "10"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        t.procs.append(prober)
        assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
        t0, m0 = time.time(), time.monotonic()
        proc.send_signal(sig)
        gone = wait_for(lambda: not holds(t, 2), 5)
        out, err = prober.communicate(timeout=30)
        assert gone is not None, f"the kernel kept the EIP of an agent stopped by {sig.name}"
        assert prober.returncode == 0, f"ARP for the EIP still answered: {err}"
        removed, unanswered = gone - m0, float(out.strip()) - t0
        print(f"{sig.name} fencing (valid_lft {lifetime} s): address gone after {removed:.3f} s, ARP unanswered "
              f"after {unanswered:.3f} s")
        assert removed <= bound and unanswered <= bound
    finally:
        if sig == signal.SIGSTOP:
            proc.send_signal(signal.SIGCONT)
        t.close()


@pytest.mark.parametrize("family", [4, 6])
def test_probe_sees_an_address_another_namespace_holds(family: int) -> None:
    ns = [f"egwt-{uuid.uuid4().hex[:6]}-{s}" for s in ("a", "b")]
    held, free = ("10.77.0.200", "10.77.0.201") if family == 4 else ("fd77::200", "fd77::201")
    try:
        for name in ns:
            sh("ip", "netns", "add", name)
        sh("ip", "-n", ns[0], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns[1])
        for name, own in zip(ns, ("10.77.0.1/24", "10.77.0.2/24"), strict=True):
            sh("ip", "-n", name, "addr", "add", own, "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", ns[1], "addr", "add", f"{held}/{32 if family == 4 else 128}", "dev", "eth0", "nodad")
        script = ("import sys\nfrom egress_cni.api.net import parse_ip\nfrom egress_cni.dataplane.probe import address_in_use\n"
                  "print(*(address_in_use('eth0', parse_ip(a)) for a in sys.argv[1:]))")
        deadline = time.monotonic() + 10  # the veth's link-local address (IPv6 multicast) settles first
        got = ""
        while time.monotonic() < deadline:
            got = sh("ip", "netns", "exec", ns[0], PYTHON, "-c", script, held, free).stdout.strip()
            if got == "True False":
                break
            time.sleep(0.2)
        assert got == "True False", f"probe of {held} (held) and {free} (free): {got}"
    finally:
        for name in ns:
            sh("ip", "netns", "del", name, check=False)


def test_sigterm_hands_the_eip_over_then_lets_it_expire_when_no_agent_returns() -> None:
    t = Topology(pods={1: ["a"]})
    try:
        proc = gateway(t)
        m0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        exited = time.monotonic() - m0
        held_after_exit = holds(t, 2)
        gone = wait_for(lambda: not holds(t, 2), HANDOVER + 3, every=0.05)
        assert gone is not None, "a handed-over EIP never expired"
        print(f"SIGTERM: agent gone after {exited:.3f} s, EIP still held then: {held_after_exit}; expired "
              f"{gone - m0:.3f} s after the signal (handover {HANDOVER} s, peers hold off {RESTART_GRACE} s)")
        assert held_after_exit or exited > HANDOVER - 0.5, "the EIP went with the agent: a restart would cut traffic"
        assert gone - m0 < RESTART_GRACE, "the EIP outlived the peers' hold-off: two nodes could hold it"
    finally:
        t.close()


def test_an_agent_restarted_after_sigterm_keeps_the_eip_without_a_gap() -> None:
    t = Topology(pods={1: ["a"]})
    try:
        proc = gateway(t)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        start_agent(t, 2)
        samples = []
        until = time.monotonic() + HANDOVER + 3  # past the handed-over lifetime: renewed by the new agent
        while time.monotonic() < until:
            samples.append(holds(t, 2))
            time.sleep(0.05)
        print(f"SIGTERM + restart: {len(samples)} samples over {HANDOVER + 3} s, {samples.count(False)} without the EIP")
        assert samples and all(samples), t.agent_log(2)
    finally:
        t.close()


def test_a_restarted_agent_claims_the_eip_again_and_keeps_it() -> None:
    t = Topology(pods={1: ["a"]})
    try:
        proc = gateway(t)
        proc.send_signal(signal.SIGKILL)  # a crash: the holder, and the IPv4 EIP on it, go at once
        proc.wait(timeout=10)
        assert wait_for(lambda: not holds(t, 2), 2) is not None, "a crashed agent's EIP outlived it"
        m0 = time.monotonic()
        start_agent(t, 2)
        back = wait_for(lambda: holds(t, 2), 30)
        assert back is not None, t.agent_log(2)
        # renewed from then on: sampled every 50 ms over three lifetimes
        samples = []
        until = time.monotonic() + 3
        while time.monotonic() < until:
            samples.append(holds(t, 2))
            time.sleep(0.05)
        print(f"restart: EIP held again {back - m0:.3f} s after the start; {len(samples)} samples, "
              f"{samples.count(False)} without it")
        assert samples and all(samples), t.agent_log(2)
    finally:
        t.close()


def test_a_parent_link_without_carrier_releases_the_eip() -> None:
    t = Topology(pods={1: ["a"]})
    try:
        gateway(t)
        m0 = time.monotonic()
        sh("ip", "-n", t.ns("ul"), "link", "set", "u-n2", "down")  # the switch port: node2's eth0 stays up
        gone = wait_for(lambda: not holds(t, 2), 5)
        assert gone is not None, t.agent_log(2)
        print(f"no carrier: EIP released {gone - m0:.3f} s after the uplink went down")
        assert gone - m0 < 1.0
        sh("ip", "-n", t.ns("ul"), "link", "set", "u-n2", "up")
        assert wait_for(lambda: holds(t, 2), 10) is not None, t.agent_log(2)
    finally:
        t.close()
