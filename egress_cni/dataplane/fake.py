"""An in-memory kernel that keeps state (for unit tests of the loop): applying a plan changes it the
way the real apply would, so tests assert on the resulting state, not on calls."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from egress_cni.dataplane.drift import Glance, glance_of
from egress_cni.dataplane.plan import Address, Dataplane, IPSet, Plan, Sysctl
from egress_cni.lowlevel.cnifiles import UnderlayHost


def apply_plan(dp: Dataplane, plan: Plan) -> Dataplane:
    link = plan.link if plan.link is not None else (None if plan.delete_link else dp.link)
    sets = {s.name: s for s in dp.ipsets}
    for s in plan.create_ipsets:
        sets[s.name] = s
    for name, member in plan.add_members:
        sets[name] = replace(sets[name], members=sets[name].members | {member})
    for name, member in plan.del_members:
        sets[name] = replace(sets[name], members=sets[name].members - {member})
    for name in plan.destroy_ipsets:
        sets.pop(name, None)
    chains = {c.key: c for c in dp.chains}
    for c in plan.write_chains:
        chains[c.key] = c
    for c in plan.drop_chains:
        chains.pop(c.key, None)
    return Dataplane(
        link=link,
        addresses=(dp.addresses | set(plan.add_addresses)) - set(plan.del_addresses),
        routes=(dp.routes | set(plan.add_routes)) - set(plan.del_routes),
        rules=(dp.rules | set(plan.add_rules)) - set(plan.del_rules),
        neighbours=(dp.neighbours | set(plan.add_neighbours)) - set(plan.del_neighbours),
        fdb=(dp.fdb | set(plan.add_fdb)) - set(plan.del_fdb),
        ipsets=frozenset(sets.values()),
        chains=frozenset(chains.values()),
        sysctls=dp.sysctls | set(plan.sysctls),
        jumps_ok=frozenset(chains),
    )


class FakeKernel:
    writes_decisions_together = False

    def __init__(self, state: Dataplane | None = None) -> None:
        self.state = state or Dataplane()
        self.applied: list[Plan] = []
        self.forgotten: list[frozenset[str]] = []  # sources of forget_unnatted_flows calls
        self.contested: frozenset[str] = frozenset()
        self.has_carrier = True
        self.refreshed: list[frozenset[Address] | None] = []  # arguments of refresh_eips calls
        self.uninstalled = False

    def read_actual(self, sysctls: frozenset[Sysctl] = frozenset()) -> Dataplane:
        return self.state

    def apply(self, plan: Plan) -> None:
        self.applied.append(plan)
        self.state = apply_plan(self.state, plan)

    def glance(self) -> Glance:
        return glance_of(self.state)

    def hint_tables(self, tables: set[int]) -> None:
        return None

    def uninstall(self) -> None:
        self.state = Dataplane()
        self.uninstalled = True

    def detach_underlay(self, host: UnderlayHost) -> list[str]:
        return []

    def refresh_eips(self, addresses: Iterable[Address] | None) -> int:
        self.refreshed.append(None if addresses is None else frozenset(addresses))
        return sum(1 for a in self.state.addresses if a.eip and (addresses is None or a in addresses))

    def hand_over_eips(self, seconds: int) -> list[str]:
        self.handed_over = seconds
        return sorted(a.cidr.split("/")[0] for a in self.state.addresses if a.eip)

    def release_eips(self) -> list[str]:
        held = sorted(a for a in self.state.addresses if a.eip)
        self.state = replace(self.state, addresses=self.state.addresses - set(held))
        return [a.cidr.split("/")[0] for a in held]

    def carrier(self) -> bool:
        return self.has_carrier

    def counters(self) -> dict[str, tuple[int, int]]:
        return {}

    def forget_unnatted_flows(self, sources: frozenset[str], cluster: frozenset[str]) -> int:
        self.forgotten.append(sources)
        return 0

    def ipset_add(self, entries: list[tuple[str, str]]) -> None:
        sets = {s.name: s for s in self.state.ipsets}
        for name, member in entries:
            sets[name] = IPSet(name, sets[name].family, sets[name].members | {member})
        self.state = replace(self.state, ipsets=frozenset(sets.values()))
