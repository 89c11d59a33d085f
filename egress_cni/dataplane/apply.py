"""The only code that changes the kernel: read what we own, apply a plan (adds before removes), uninstall."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from egress_cni.api.net import IP, parse_cidr
from egress_cni.dataplane import announce, conntrack, nft, nftscript
from egress_cni.dataplane.drift import Glance
from egress_cni.dataplane.eipdev import EipHolder
from egress_cni.dataplane.eipnetlink import EipNetlink
from egress_cni.dataplane.glance import Glancer, legacy_fingerprint, nft_generation
from egress_cni.dataplane.inputs import DataplaneConfig
from egress_cni.dataplane.netlink import Netlink
from egress_cni.dataplane.plan import IPV4, IPV6, Address, Chain, Dataplane, IPSet, Plan, Sysctl, diff, fingerprint, rule_tag
from egress_cni.dataplane.probe import address_in_use
from egress_cni.dataplane.render import ipset_script, restore_text
from egress_cni.dataplane.xtables import SavedTable, Xtables, detect_backend, ipset_restore, ipset_sizes, read_ipsets
from egress_cni.lowlevel.cnifiles import UnderlayHost

log = logging.getLogger(__name__)
IPSET_ERR_EXIST = 4103
ENGINES = ("nftables", "nft", "legacy")  # our own nftables table; iptables-nft + ipset; iptables-legacy + ipset


def choose_engine(mode: str = "auto") -> str:
    """`nftables` (rules and sets in our own table, hooked before iptables' tables: no rule someone
    inserts at the top of a built-in chain comes before ours) where the `nft` tool works; else the
    iptables backend `detect_backend` picks (old kernels, hosts without nft)."""
    if mode == "nftables" or (mode == "auto" and nft.usable()):
        return "nftables"
    return detect_backend(mode)


class KernelDataplane:
    """Reads and writes the state of the network namespace this process runs in."""

    def __init__(self, config: DataplaneConfig, parent: str, families: list[int], backend: str = "auto",
                 probe: Callable[[str, IP], bool] = address_in_use) -> None:
        self.config = config
        self.parent = parent
        self.families = families
        self.netlink = Netlink(config)
        # the fencing thread's own socket: renewals never wait for the reconcile's netlink traffic,
        # only for the EIP add/delete they must not race (the shared lock)
        self._fast: Netlink | None = None
        self._fast_lock = threading.Lock()
        self._eips: EipNetlink | None = None  # the fencing thread's raw socket (dataplane/eipnetlink.py)
        self._probe = probe
        self.contested: frozenset[str] = frozenset()  # EIPs the last apply did not claim: someone answers
        self.engine = choose_engine(backend)
        # with the nftables engine, xtables only finds what an iptables-engine agent left (removed)
        self.xtables = Xtables(detect_backend("auto" if self.engine == "nftables" else self.engine), config.chain_prefix)
        self.nft = nft.Nftables(config.ipset_prefix) if self.engine == "nftables" else None
        self.writes_decisions_together = self.nft is not None
        self._nft_view = nft.NftView()
        self._leftovers: tuple[set[Chain], set[str]] | None = None  # iptables-engine chains and ipsets, once
        self.saved: dict[tuple[int, str], SavedTable] = {}
        self._tables_hint: set[int] = set()
        self._ipset: Any = None  # tables of desired routes: a route whose rule vanished is still seen
        self._holder: EipHolder | None = None
        self._glancer: Glancer | None = None  # the drift check's raw netlink socket (the worker thread's)
        self._glanced: tuple[object, tuple[tuple[tuple[int, str, str], tuple[str, ...]], ...], frozenset[tuple[int, str, str]],
                             tuple[tuple[str, int], ...]] | None = None

    def hold_eips(self, *, persist: bool = False) -> str:
        """Open the EIP holder (dataplane/eipdev.py) for the life of this process; the link IPv4 EIPs
        go on ("" when it cannot be held: they stay on the parent, fenced by their lifetime only)."""
        if self._holder is None:
            self._holder = EipHolder(self.config.eip_dev, self.parent, persist=persist)
            if self._holder.name:
                self.netlink.link_up(self._holder.name)
        return self._holder.name

    def close(self) -> None:
        self.netlink.close()
        if self._glancer is not None:
            self._glancer.close()
        if self._fast is not None:
            self._fast.close()
        if self._eips is not None:
            self._eips.close()

    def _fast_netlink(self) -> Netlink:
        with self._fast_lock:
            if self._fast is None:
                self._fast = Netlink(self.config, self.netlink.eip_lock)
            return self._fast

    def _eip_netlink(self) -> EipNetlink:
        with self._fast_lock:
            if self._eips is None:
                self._eips = EipNetlink(self.config.eip_proto)
            return self._eips

    def refresh_eips(self, addresses: Iterable[Address] | None) -> int:
        """Renew the lifetime of these EIP addresses (None: all of ours) where the kernel still has
        them; never adds one. An EIP already at the end of its lifetime is let go (the next reconcile
        probes before it claims it again). How many renewed."""
        want = None if addresses is None else {(a.dev, a.cidr) for a in addresses if a.eip}
        nl = self._eip_netlink()
        with self.netlink.eip_lock:
            held = [(index, dev, ip, plen) for index, dev, ip, plen, left in nl.held([self.parent, self.config.eip_dev])
                    if left != 0 and (want is None or (dev, f"{ip}/{plen}") in want)]
            nl.renew(held, self.config.eip_lifetime)
        return len(held)

    def carrier(self) -> bool:
        return self._eip_netlink().carrier(self.parent)

    def release_eips(self) -> list[str]:
        """Remove every EIP address we own at once (uninstall)."""
        return self._fast_netlink().release_eips(self.parent)

    def hand_over_eips(self, seconds: int) -> list[str]:
        """The EIP holder outlives this process and every EIP we own gets a last lifetime of
        `seconds` (SIGTERM): a restarted agent attaches to the holder and renews them."""
        if self._holder is not None:
            self._holder.persist(True)
        return self._fast_netlink().hand_over_eips(self.parent, seconds)

    def _claimable(self, plan: Plan) -> Plan:
        """Probe before claim: an EIP address we do not hold yet is added only when nobody on the
        segment answers for it; the others stay out of this apply (`contested`) and are probed again
        by a later reconcile."""
        contested = set()
        for a in plan.add_addresses:
            if a.eip:
                ip = parse_cidr(a.cidr).network
                try:
                    in_use = self._probe(self.parent, ip)  # on the segment, wherever the address will live
                except OSError as exc:  # cannot probe: do not claim blind
                    log.warning("cannot probe eip", extra={"dev": self.parent, "eip": ip, "error": str(exc)})
                    in_use = True
                if in_use:
                    log.warning("eip held by another node", extra={"dev": self.parent, "eip": ip})
                    contested.add(a)
        self.contested = frozenset(a.cidr.split("/")[0] for a in contested)
        if not contested:
            return plan
        return replace(plan, add_addresses=tuple(a for a in plan.add_addresses if a not in contested))

    def _read_rules(self) -> tuple[set[Chain], set[tuple[int, str, str]], set[IPSet]]:
        if self.nft is None:
            chains, jumps_ok, self.saved = self.xtables.read(self.families)
            return chains, jumps_ok, read_ipsets(self.config.ipset_prefix)
        if self._leftovers is None:  # an agent of the iptables engine ran here before: its state goes after our first write
            old_chains, _, self.saved = self.xtables.read(self.families)
            self._leftovers = (old_chains, {s.name for s in read_ipsets(self.config.ipset_prefix)})
        self._nft_view = self.nft.read(self.families)
        return self._nft_view.chains, self._nft_view.jumps_ok, self._nft_view.sets

    def read_actual(self, sysctls: frozenset[Sysctl] = frozenset()) -> Dataplane:
        nl = self.netlink
        rules = nl.read_rules()
        neighbours, fdb = nl.read_neighbours()
        chains, jumps_ok, sets = self._read_rules()
        return Dataplane(
            link=nl.read_link(),
            addresses=frozenset(nl.read_addresses(self.parent)),
            routes=frozenset(nl.read_routes({r.table for r in rules} | self._tables_hint)),
            rules=frozenset(rules),
            neighbours=frozenset(neighbours),
            fdb=frozenset(fdb),
            ipsets=frozenset(sets),
            chains=frozenset(chains),
            sysctls=frozenset(s for s in sysctls if _read_sysctl(s.path) == s.value),
            jumps_ok=frozenset(jumps_ok),
        )

    def glance(self) -> Glance:
        """The drift check's cheap read (dataplane/drift.py): raw netlink dumps (dataplane/glance.py),
        set sizes from `ipset list -t`, and one `iptables-save` per family, skipped while the nftables
        generation is the one the last save saw (nft backend)."""
        if self._glancer is None:
            self._glancer = Glancer(self.config)
        link, addresses, rules, routes, neighbours, fdb = self._glancer.read(self.parent, self._tables_hint)
        # before the save: a change during it shows next time
        gen = nft_generation() if self.xtables.backend == "nft" or self.nft else legacy_fingerprint(self.families)
        if gen is None or self._glanced is None or self._glanced[0] != gen:
            if self.nft is not None:  # one listing holds chains and sets: their sizes come with it
                view = self.nft.read(self.families)
                chains, jumps_ok = view.chains, view.jumps_ok
                sizes = tuple(sorted((s.name, len(s.members)) for s in view.sets))
            else:
                chains, jumps_ok = self.xtables.glance(self.families)
                sizes = ()
            self._glanced = (gen, tuple(sorted((c.key, fingerprint(c)) for c in chains)), frozenset(jumps_ok), sizes)
        _, fingerprints, ok, sizes = self._glanced
        if self.nft is None:
            sizes = tuple(sorted(ipset_sizes(self.config.ipset_prefix).items()))
        net = Dataplane(link=link, addresses=frozenset(addresses), routes=frozenset(routes), rules=frozenset(rules),
                        neighbours=frozenset(neighbours), fdb=frozenset(fdb), jumps_ok=ok)
        return Glance(net=net, set_sizes=sizes, chains=fingerprints)

    def hint_tables(self, tables: set[int]) -> None:
        self._tables_hint = set(tables)

    def counters(self) -> dict[str, tuple[int, int]]:
        """rule tag -> (packets, bytes), from the last read."""
        if self.nft is not None:
            return dict(self._nft_view.counters)
        out: dict[str, tuple[int, int]] = {}
        for st in self.saved.values():
            for tag, (p, b) in st.counters.items():
                old = out.get(tag, (0, 0))
                out[tag] = (old[0] + p, old[1] + b)
        return out

    def ipset_add(self, entries: list[tuple[str, str]]) -> None:
        """Members straight over netlink (no fork/exec): the new-endpoint fast path (the nftables
        engine: one `nft` transaction)."""
        if self.nft is not None:
            self.nft.add_elements(entries, self._nft_view.caches)
            return
        if self._ipset is None:
            from pyroute2 import IPSet as NetlinkIPSet

            self._ipset = NetlinkIPSet()
        for name, member in entries:
            try:
                self._ipset.add(name, member, etype="net", family=socket.AF_INET6 if ":" in member else socket.AF_INET)
            except Exception as exc:  # pyroute2 raises its private _IPSetError; "already there" is success
                if getattr(exc, "code", None) != IPSET_ERR_EXIST:
                    raise

    def forget_unnatted_flows(self, sources: frozenset[str], cluster: frozenset[str]) -> int:
        """After a gateway move the `unnatted` rule drops such a flow's packets for as long as its entry
        lives (each packet refreshes it); without the entry the next packet is a first packet again
        and gets the EIP or the tunnel."""
        return conntrack.forget_unnatted_flows(sources, cluster)

    def apply(self, plan: Plan) -> None:
        plan = self._claimable(plan)
        if plan.empty:
            return
        nl = self.netlink
        nl.apply_adds(plan)
        for s in plan.sysctls:
            _write_sysctl(s.path, s.value)
        if self.nft is not None:
            self._apply_nft(plan)
        else:
            self._apply_xtables(plan)
        nl.apply_removes(plan)
        eips = [a.cidr.split("/")[0] for a in plan.add_addresses if a.eip]
        if eips:
            announce.announce(self.parent, eips)
        log.info("applied plan", extra={"changes": plan.summary()})

    def _apply_nft(self, plan: Plan) -> None:
        """One transaction per family: sets, members and chains change together."""
        assert self.nft is not None
        family_of = {s.name: s.family for s in self._nft_view.sets} | {s.name: s.family for s in plan.create_ipsets}

        def fam(member: str) -> int:
            return IPV6 if ":" in member else IPV4

        for f in self.families:
            text = nftscript.script(
                self.nft.table, f, sets=[s for s in plan.create_ipsets if s.family == f],
                add_members=[(n, m) for n, m in plan.add_members if fam(m) == f],
                del_members=[(n, m) for n, m in plan.del_members if fam(m) == f],
                chains=[c for c in plan.write_chains if c.family == f],
                drop_chains=[c for c in plan.drop_chains if c.family == f],
                destroy_sets=[n for n in plan.destroy_ipsets if family_of.get(n, IPV4) == f],
                slot_chains=[n for g, n in self._nft_view.slot_chains if g == f])
            if text.count("\n") > 1:  # more than "add table": something to write
                self.nft.apply(text)
        if plan.prune and self._leftovers is not None and any(self._leftovers):
            chains, sets = self._leftovers
            for f in self.families:
                self._restore(f, [], [c for c in chains if c.family == f], jumps=False)
            ipset_restore(ipset_script((), (), (), sorted(sets)))
            log.info("removed the iptables engine's chains and ipsets", extra={"chains": len(chains), "ipsets": len(sets)})
            self._leftovers = (set(), set())

    def _apply_xtables(self, plan: Plan) -> None:
        ipset_restore(ipset_script(plan.create_ipsets, plan.add_members))
        for f in self.families:
            write = [c for c in plan.write_chains if c.family == f]
            union = self._nat_union(f, write)
            if union:  # nat (union), then mangle and filter, then nat (final): see _nat_union
                self._restore(f, union, [], jumps=True)
                self._restore(f, [c for c in write if c.table != "nat"], [], jumps=True)
                write = [c for c in write if c.table == "nat"]
            self._restore(f, write, [], jumps=True)
        ipset_restore(ipset_script((), (), plan.del_members))
        for f in self.families:
            self._restore(f, [], [c for c in plan.drop_chains if c.family == f], jumps=False)
        ipset_restore(ipset_script((), (), (), plan.destroy_ipsets))

    def _nat_union(self, family: int, write: list[Chain]) -> list[Chain]:
        """The nat chains with both their new rules and the old ones they drop, for a first write.

        iptables-restore commits table by table: between the mangle commit (which decides whether a
        flow is tunnelled or leaves here) and the nat commit (which SNATs what leaves here) a first
        packet could meet a mangle that sends it out of eth0 and a nat that does not yet, or no longer,
        SNAT it (the CNI's masquerade would then give it the node IP), and between the nat and filter
        commits a tunnelled packet could still be accepted for a policy whose SNAT is gone. Written
        before the other tables, the union holds every SNAT rule either version needs while mangle and
        filter change; the final nat write after them removes the old ones."""
        if not any(c.table != "nat" for c in write):
            return []
        st = self.saved.get((family, "nat"))
        current = st.chains if st is not None else {}
        out = []
        for c in write:
            if c.table != "nat":
                continue
            have = {rule_tag(r) for r in c.rules}
            old = tuple(r for r in current.get(c.name, []) if rule_tag(r) not in have and not rule_tag(r).startswith("?"))
            out.append(replace(c, rules=c.rules + old))  # also when nothing is old: nat before mangle
        return out

    def _restore(self, family: int, write: list[Chain], drop: list[Chain], jumps: bool) -> None:
        if not write and not drop:
            return
        hooks = {(t, h): rules for (f, t), st in self.saved.items() if f == family for h, rules in st.hooks.items()}
        self.xtables.restore(family, restore_text(write, drop, hooks, jumps=jumps))
        if jumps:  # our jumps now sit at position 1: keep the cached view right for a following drop
            for c in write:
                rules = [r for r in hooks.get((c.table, c.hook), []) if not r.endswith(f"-j {c.name}")]
                st = self.saved.get((family, c.table))
                if st is not None:
                    st.hooks[c.hook] = [f"-m comment --comment egw:jump -j {c.name}", *rules]

    def detach_underlay(self, host: UnderlayHost) -> list[str]:
        """Uninstall: the plugin's host side for underlay pods (agent/uninstall.py UnderlayHost): its
        shared rule and its table's routes, when no underlay pod of ours runs any more."""
        return self.netlink.detach_underlay(host.veth_prefix, host.table, host.priority)

    def uninstall(self) -> None:
        """Remove everything we own: chains and jumps, sets, rules, routes, EIPs, the VXLAN link, the
        EIP holder."""
        self.apply(diff(Dataplane(), self.read_actual()))
        if self.nft is not None:
            self.nft.delete_tables(self.families)
        self.netlink.delete_eip_holder()


def _sysctl_path(path: str) -> str:
    return os.path.join("/proc/sys", path)


def _read_sysctl(path: str) -> str | None:
    try:
        with open(_sysctl_path(path), encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(_sysctl_path(path), "w", encoding="ascii") as f:
            f.write(value)
    except OSError as exc:
        log.warning("cannot set sysctl", extra={"path": path, "error": str(exc)})

