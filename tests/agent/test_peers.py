"""The peer monitor's pure parts: messages and their MAC, the loss detector on an injected clock, the
takeover decision, notices and overrides, and compute steering by an override (no sockets)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from egress_cni.agent import peer_wire, peers
from egress_cni.agent.peer_wire import Message, MessageError, Takeover, decode, encode
from egress_cni.agent.peers import Entry, Liveness, PeerMonitor, decide
from egress_cni.agent.sources import MemorySource
from egress_cni.agent.state import StateView
from egress_cni.dataplane.compute import desired_dataplane
from egress_cni.dataplane.inputs import ClusterState, DataplaneConfig, NodeFacts

pytestmark = pytest.mark.unit

API = "egressgateway.spidernet.io/v1beta1"
KEY = b"s3cret"
EIP = "10.100.0.200"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- messages -------------------------------------------------------------------------------------

MSG = Message("node2", 1733050000.5, 7, (EIP,), (Takeover("gw|" + EIP, "node2", "node3", "node3", ("default/web",)),))


def test_a_message_round_trips_plain_and_signed() -> None:
    assert decode(encode(MSG)) == MSG
    assert decode(encode(MSG, KEY), KEY) == MSG
    assert decode(encode(MSG, KEY)) == MSG  # without a key, a signed message is accepted unverified


def test_with_a_key_unsigned_and_badly_signed_messages_are_rejected() -> None:
    with pytest.raises(MessageError, match="unauthenticated"):
        decode(encode(MSG), KEY)
    with pytest.raises(MessageError, match="bad MAC"):
        decode(encode(MSG, b"other key"), KEY)
    data = bytearray(encode(MSG, KEY))
    data[-3] ^= 0x01  # one bit of the body flipped
    with pytest.raises(MessageError, match="bad MAC"):
        decode(bytes(data), KEY)


@pytest.mark.parametrize("data", [b"", b"hello", b"EGP1{", b"EGP1[]", b'EGP1{"n":"x"}',
                                  b'EGP1{"n":"x","i":1,"s":"1","e":[],"t":[]}',
                                  b'EGP1{"n":"x","i":1,"s":1,"e":[],"t":[{"e":"a"}]}'])
def test_malformed_datagrams_are_rejected(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode(data)


def test_the_key_file_is_read_stripped(tmp_path: Any) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"abc\n")
    assert peer_wire.read_key(str(path)) == b"abc"
    assert peer_wire.read_key("") is None
    path.write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty"):
        peer_wire.read_key(str(path))


# --- loss detector --------------------------------------------------------------------------------

def test_a_peer_is_lost_after_three_missed_intervals() -> None:
    clock = Clock()
    live = Liveness(0.3, clock)
    live.watch(["node2"])
    assert live.alive("node2")  # first watched counts as heard: no takeover from a peer not heard yet
    assert live.heard("node2", 1.0, 1)
    clock.advance(0.29)
    assert live.alive("node2") and live.lost_for("node2") == 0.0
    clock.advance(0.02)
    assert not live.alive("node2")
    assert live.lost_for("node2") == pytest.approx(0.01)
    assert live.heard("node2", 1.0, 2)
    assert live.alive("node2")


def test_replayed_or_older_heartbeats_do_not_count() -> None:
    clock = Clock()
    live = Liveness(0.3, clock)
    assert live.heard("node2", 5.0, 10)
    clock.advance(0.5)
    assert not live.heard("node2", 5.0, 10)  # replay
    assert not live.heard("node2", 4.0, 99)  # an older incarnation
    assert not live.alive("node2")
    assert live.heard("node2", 6.0, 1)  # restarted: a new incarnation starts its sequence again
    assert live.alive("node2")


def test_a_never_heard_node_counts_as_lost_forever() -> None:
    live = Liveness(0.3, Clock())
    assert not live.alive("nodeX") and live.lost_for("nodeX") == float("inf")


# --- the takeover decision ------------------------------------------------------------------------

E = Entry("gw|" + EIP, "node2", (EIP,), ("default/web",), ("node3", "node4", "node5"))


def judge(me: str, alive: set[str], lost_for: float, serving: dict[str, str] | None = None) -> list[str]:
    return [f"{e.id}<-{r}" for e, r in decide([E], me, serving or {}, lambda n: n in alive, lambda _n: lost_for)]


def test_the_first_standby_takes_over_a_lost_owner_at_once() -> None:
    assert judge("node3", {"node4", "node5"}, 0.0) == [f"{E.id}<-node2"]
    assert judge("node3", {"node2", "node4"}, 0.0) == []  # owner alive
    assert judge("node2", set(), 5.0) == []  # the owner itself
    assert judge("node1", set(), 5.0) == []  # not a standby (a worker)


def test_standby_k_waits_k_steps_and_only_when_every_earlier_standby_is_lost() -> None:
    assert judge("node4", {"node3"}, 5.0) == []  # node3 is alive: it is node3's
    assert judge("node4", set(), 0.19) == []
    assert judge("node4", set(), 0.2) == [f"{E.id}<-node2"]
    assert judge("node5", set(), 0.39) == []
    assert judge("node5", {"node4"}, 1.0) == []
    assert judge("node5", set(), 0.4) == [f"{E.id}<-node2"]


def test_a_takeover_chain_follows_the_last_server() -> None:
    serving = {E.id: "node3"}
    assert judge("node4", {"node2"}, 0.0, serving) == [f"{E.id}<-node3"]  # node3 is the standby left out
    assert judge("node4", {"node3"}, 5.0, serving) == []
    assert judge("node3", set(), 5.0, serving) == []  # ours already


def test_the_owner_takes_its_entry_back_when_the_node_that_took_it_over_is_lost() -> None:
    pair = Entry("gw|" + EIP, "node3", (EIP,), ("default/web",), ("node2",))
    serving = {pair.id: "node2"}  # node2 took it over; the controller has not moved it yet
    assert [r for _, r in decide([pair], "node3", serving, lambda n: False, lambda _n: 0.0)] == ["node2"]
    assert decide([pair], "node3", serving, lambda n: n == "node2", lambda _n: 0.0) == ()
    assert decide([pair], "node2", serving, lambda n: False, lambda _n: 5.0) == ()  # ours already
    three = Entry("gw|" + EIP, "node3", (EIP,), ("default/web",), ("node2", "node4"))
    assert decide([three], "node3", serving, lambda n: n == "node4", lambda _n: 5.0) == ()  # node4 first
    assert [r for _, r in decide([three], "node3", serving, lambda n: False, lambda _n: 0.2)] == ["node2"]


# --- the monitor ----------------------------------------------------------------------------------

def tunnel(n: int) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "EgressTunnel", "metadata": {"name": f"node{n}"},
            "status": {"tunnel": {"ipv4": f"172.31.0.{n}", "mac": f"66:00:00:00:00:0{n}",
                                  "parent": {"name": "eth0", "ipv4": f"10.100.0.{n}"}},
                       "mark": f"0x2600000{n}", "phase": "Ready"}}


def objects(owner: str = "node2", standbys: list[str] | None = None) -> list[dict[str, Any]]:
    eip: dict[str, Any] = {"ipv4": EIP, "policies": [{"name": "web", "namespace": "default"}]}
    if standbys is not None:
        eip["standbys"] = standbys
    others = [n for n in ("node2", "node3") if n != owner]
    gateway = {"apiVersion": API, "kind": "EgressGateway", "metadata": {"name": "gw"},
               "spec": {"ippools": {"ipv4": [EIP]}, "nodeSelector": {"selector": {}}},
               "status": {"nodeList": [{"name": owner, "status": "Ready", "eips": [eip]},
                                       *({"name": n, "status": "Ready"} for n in others)]}}
    policy = {"apiVersion": API, "kind": "EgressPolicy", "metadata": {"name": "web", "namespace": "default"},
              "spec": {"egressGatewayName": "gw", "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}},
              "status": {"eip": {"ipv4": EIP}, "node": owner}}
    slice_ = {"apiVersion": API, "kind": "EgressEndpointSlice",
              "metadata": {"name": "web-1", "namespace": "default", "labels": {"spidernet.io/policy-name": "web"}},
              "endpoints": [{"ns": "default", "pod": "p1a", "node": "node1", "ipv4": ["10.244.1.10"]}]}
    return [tunnel(1), tunnel(2), tunnel(3), gateway, policy, slice_]


def state(owner: str = "node2", standbys: list[str] | None = None) -> ClusterState:
    return StateView(MemorySource(objects(owner, standbys)).stores).state()


class Cluster:
    """Monitors for node1 (worker), node2 (owner), node3 (standby) on one clock, wired by hand."""

    def __init__(self, key: bytes | None = None, standbys: list[str] | None = None) -> None:
        self.clock = Clock()
        self.changes = {n: 0 for n in ("node1", "node2", "node3")}
        self.m = {n: PeerMonitor(n, key=key, clock=self.clock, incarnation=1.0,
                                 on_change=lambda n=n: self.changes.__setitem__(n, self.changes[n] + 1))  # type: ignore[misc]
                  for n in self.changes}
        self.state = state(standbys=standbys)
        self.held = {"node1": frozenset[str](), "node2": frozenset({EIP}), "node3": frozenset[str]()}
        self.down: set[str] = set()
        self.cut: set[frozenset[str]] = set()  # heartbeat paths dropped

    def step(self) -> None:
        by_address = {f"10.100.0.{n[-1]}": n for n in self.m}
        sent: list[tuple[str, str, bytes]] = []
        for n, mon in self.m.items():
            if n in self.down:
                continue
            mon.update(self.state, self.held[n])
            sent += [(n, by_address[a], d) for a, d in mon.tick()]
        for src, dst, data in sent:
            if dst not in self.down and frozenset((src, dst)) not in self.cut:
                self.m[dst].receive(data)
        self.clock.advance(0.1)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.1)):
            self.step()


def test_only_gateway_eligible_agents_send_heartbeats_to_their_peers() -> None:
    c = Cluster()
    for n in c.m:
        c.m[n].update(c.state, c.held[n])
    assert c.m["node1"].tick() == []  # a worker sends nothing
    assert [a for a, _ in c.m["node2"].tick()] == ["10.100.0.3"]
    assert decode(c.m["node3"].tick()[0][1]).node == "node3"


def test_owner_lost_the_standby_takes_over_announces_and_the_worker_steers() -> None:
    c = Cluster()
    c.run(1.0)
    assert all(m.overrides(c.state) == {} for m in c.m.values())
    c.down.add("node2")
    c.held["node2"] = frozenset()
    c.run(0.2)  # two missed intervals: still alive
    assert c.m["node3"].overrides(c.state) == {}
    c.run(0.2)
    assert c.m["node3"].overrides(c.state) == {"default/web": "node3"}  # ours at once: the reconcile claims
    assert c.m["node1"].overrides(c.state) == {}  # not announced before the address is held
    before = c.changes["node3"]
    c.run(0.5)
    assert c.changes["node3"] > before  # the reconcile is asked again while the claim is pending
    c.held["node3"] = frozenset({EIP})
    c.run(0.2)
    assert c.m["node1"].overrides(c.state) == {"default/web": "node3"}


def test_the_override_is_kept_until_the_api_agrees_or_moves_on() -> None:
    c = Cluster()
    c.run(0.5)
    c.down.add("node2")
    c.run(0.6)
    c.held["node3"] = frozenset({EIP})
    c.run(0.2)
    assert c.m["node1"].overrides(c.state) == {"default/web": "node3"}
    c.down.discard("node2")  # it comes back: it hears the takeover and keeps off the EIP
    c.run(0.5)
    assert c.m["node2"].overrides(c.state) == {"default/web": "node3"}
    assert c.m["node1"].overrides(c.state) == {"default/web": "node3"}
    c.state = state(owner="node3")  # the API caught up
    c.run(0.2)
    assert all(m.overrides(c.state) == {} for m in c.m.values())
    assert all(m.serving() == {} for m in c.m.values())


def test_a_cut_heartbeat_path_never_produces_a_notice_and_the_takeover_is_withdrawn() -> None:
    c = Cluster()
    c.run(0.5)
    c.cut.add(frozenset(("node2", "node3")))
    c.run(0.6)
    assert c.m["node3"].overrides(c.state) == {"default/web": "node3"}  # tries: the probe decides
    c.run(peers.CLAIM_SECONDS)  # the probe keeps finding node2 answering: node3 never holds it
    assert c.m["node3"].overrides(c.state) == {}
    assert c.m["node1"].overrides(c.state) == {} and c.m["node2"].overrides(c.state) == {}
    c.run(1.0)
    assert c.m["node3"].overrides(c.state) == {}  # held off


def test_notices_need_a_valid_mac_when_a_key_is_configured() -> None:
    c = Cluster(key=KEY)
    forged = encode(Message("node3", 9.0, 1, (EIP,), (Takeover(f"gw|{EIP}", "node3", "node2", "node2", ("default/web",)),)))
    c.m["node1"].update(c.state, frozenset())
    assert not c.m["node1"].receive(forged)
    assert c.m["node1"].overrides(c.state) == {} and c.m["node1"].rejected == 1
    assert c.m["node1"].receive(encode(Message("node3", 9.0, 2, (EIP,), forged_takeover()), KEY))
    assert c.m["node1"].overrides(c.state) == {"default/web": "node3"}


def forged_takeover() -> tuple[Takeover, ...]:
    return (Takeover(f"gw|{EIP}", "node3", "node2", "node2", ("default/web",)),)


def test_a_notice_that_does_not_follow_from_what_we_know_is_ignored() -> None:
    m = PeerMonitor("node1", clock=Clock(), incarnation=1.0)
    m.update(state(), frozenset())
    stale = Takeover(f"gw|{EIP}", "node3", "node2", "node5", ("default/web",))  # origin the API never placed
    assert m.receive(encode(Message("node3", 1.0, 1, (), (stale,))))
    assert m.overrides(state()) == {}
    by_other = Takeover(f"gw|{EIP}", "node4", "node2", "node2", ("default/web",))
    assert m.receive(encode(Message("node3", 1.0, 2, (), (by_other,))))  # node3 announcing node4's takeover
    assert m.overrides(state()) == {}


def test_without_standbys_in_the_status_the_other_nodes_of_the_node_list_stand_by() -> None:
    (e,) = peers.entries(state().gateways)
    assert e.owner == "node2" and e.standbys == ("node3",) and e.policies == ("default/web",)
    (e,) = peers.entries(state(standbys=["node3", "node2"]).gateways)
    assert e.standbys == ("node3",)


def test_takeover_switched_off_decides_nothing() -> None:
    clock = Clock()
    m = PeerMonitor("node3", clock=clock, takeover=False)
    m.update(state(), frozenset())
    clock.advance(5)
    m.tick()
    assert m.overrides(state()) == {}


def test_a_restarted_new_owner_keeps_serving_the_eip_it_holds() -> None:
    """node3 took the EIP over and restarted: the address is still on its link (refreshed lifetime)
    and the API still places it on node2; it is ours from the first reconcile on, and announced."""
    clock = Clock()
    m = PeerMonitor("node3", clock=clock, incarnation=2.0)
    m.adopt({EIP})
    s = state()
    assert m.overrides(s) == {"default/web": "node3"}  # before any update: the first reconcile keeps it
    m.update(s, frozenset({EIP}))
    assert m.serving() == {f"gw|{EIP}": "node3"}
    sent = m.tick()
    assert {a for a, _ in sent} == {"10.100.0.1", "10.100.0.2"}  # the notice goes to every node
    assert decode(sent[0][1]).takeovers[0].replaced == "node2"
    fresh = PeerMonitor("node3", clock=clock)
    fresh.adopt({"10.9.9.9"})  # not an EIP of any entry: nothing
    fresh.update(s, frozenset())
    assert fresh.overrides(s) == {}


# --- compute and the state view -------------------------------------------------------------------

def test_compute_steers_to_the_override_and_keeps_the_status_eip() -> None:
    facts = {n: NodeFacts(n, "eth0", f"10.100.0.{n[-1]}") for n in ("node1", "node3")}
    s = state()
    worker = desired_dataplane(s, facts["node1"], DataplaneConfig())
    assert worker.gateway_of == {"default/web": "node2"}
    moved = replace(s, overrides={"default/web": "node3"})
    assert desired_dataplane(moved, facts["node1"], DataplaneConfig()).gateway_of == {"default/web": "node3"}
    standby = desired_dataplane(moved, facts["node3"], DataplaneConfig())
    assert f"{EIP}/32" in {a.cidr for a in standby.dataplane.addresses if a.eip}
    assert any(f"SNAT --to-source {EIP}" in r for c in standby.dataplane.chains for r in c.rules)


def test_the_state_view_merges_overrides_and_rebuilds_when_they_change() -> None:
    class Fixed:
        version = 0
        value: dict[str, str] = {}

        def overrides(self, _state: ClusterState) -> dict[str, str]:
            return self.value

    ov = Fixed()
    view = StateView(MemorySource(objects()).stores, overrides=ov)
    assert view.state().overrides == {} and view.base().overrides == {}
    ov.value = {"default/web": "node3"}
    assert view.state().overrides == {}  # cached: the version did not move
    ov.version = 1
    assert view.state().overrides == {"default/web": "node3"}
    assert view.base().overrides == {}


def test_a_restarting_peer_is_held_alive_for_its_grace() -> None:
    from egress_cni.agent.peer_wire import Message, decode, encode
    from egress_cni.agent.peers import Liveness

    now = [100.0]
    live = Liveness(0.3, lambda: now[0])
    live.watch(["node2"])
    assert live.heard("node2", 1.0, 1)
    farewell = decode(encode(Message("node2", 1.0, 2, grace=5.0), b"k"), b"k")
    assert farewell.grace == 5.0 and live.heard("node2", 1.0, 2, farewell.grace)
    now[0] += 4.0
    assert live.alive("node2")  # restarting: no takeover yet
    now[0] += 1.5
    assert not live.alive("node2") and live.lost_for("node2") > 0  # never came back: fail over


def test_a_heartbeat_sent_after_the_farewell_does_not_cut_the_grace_short() -> None:
    now = [100.0]
    live = Liveness(0.3, lambda: now[0])
    live.watch(["node2"])
    assert live.heard("node2", 1.0, 2, grace=5.0)  # the farewell
    assert live.heard("node2", 1.0, 3)  # the peer thread's last tick, racing the stop
    now[0] += 4.0
    assert live.alive("node2")


def test_the_farewell_goes_out_after_the_peer_thread_stopped() -> None:
    import socket
    import threading

    from egress_cni.agent.peer_socket import PeerService

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.2", 0))  # node2; node1 sends from 127.0.0.1 to the same port
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    monitor = PeerMonitor("node1")
    monitor._view = peers._View(peers=frozenset({"node2"}), addresses={"node2": "127.0.0.2"})
    service = PeerService(monitor, address="127.0.0.1", port=port)
    service.bind()
    stop = threading.Event()
    stop.set()
    service.run(stop)  # the thread ends first on SIGTERM: the socket must outlive it
    service.farewell()
    try:
        got = decode(receiver.recv(65535), None)
        assert got.node == "node1" and got.grace == peers.RESTART_GRACE
    finally:
        service.close()
        receiver.close()


def test_datagrams_queued_during_a_stall_are_read_before_liveness_is_judged() -> None:
    import socket

    from egress_cni.agent.peer_socket import PeerService

    now = [100.0]
    monitor = PeerMonitor("node1", clock=lambda: now[0])
    monitor.liveness.watch(["node2"])
    service = PeerService(monitor, address="127.0.0.3", port=0)
    sock = service.bind()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        now[0] += 2.0  # this thread stalled for 2 s; node2's heartbeat waits in the socket
        sender.sendto(encode(Message("node2", 1.0, 1), None), sock.getsockname())
        assert not monitor.liveness.alive("node2")
        service._drain(sock)
        assert monitor.liveness.alive("node2")
    finally:
        sender.close()
        service.close()
