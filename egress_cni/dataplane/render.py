"""Text forms of a `Dataplane`: the golden files (read like `ip`/`ipset`/`iptables-save` output) and
the `iptables-restore --noflush` / `ipset restore` scripts the apply layer feeds to the kernel (pure)."""

from __future__ import annotations

from collections.abc import Iterable

from egress_cni.dataplane import nftscript
from egress_cni.dataplane.plan import IPV4, TABLES, Chain, Dataplane, IPSet

JUMP_COMMENT = "egw:jump"


def jump_spec(chain: Chain) -> str:
    return f"-m comment --comment {JUMP_COMMENT} -j {chain.name}"


def _family(f: int) -> str:
    return "inet" if f == IPV4 else "inet6"


def golden_files(dp: Dataplane, nft_table: str = "egress") -> dict[str, str]:
    """expected_<name>.txt contents for a golden scenario directory."""
    link = []
    if dp.link:
        lk = dp.link
        link.append(f"link {lk.name} vxlan id {lk.vni} dstport {lk.port} dev {lk.parent} local {lk.local} "
                    f"address {lk.mac} mtu {lk.mtu} nolearning")
    link += [f"address {a.cidr} dev {a.dev}{' eip' if a.eip else ''}" for a in sorted(dp.addresses)]
    link += [f"neighbour {n.ip} lladdr {n.mac} dev {n.dev} permanent" for n in sorted(dp.neighbours)]
    link += [f"fdb {f.mac} dst {f.dst} dev {f.dev} self permanent" for f in sorted(dp.fdb)]
    link += [f"sysctl {s.path}={s.value}" for s in sorted(dp.sysctls)]
    routes = [f"-{r.family} route {r.dst} via {r.via} dev {r.dev} onlink table 0x{r.table:x}" for r in sorted(dp.routes)]
    rules = [f"-{r.family} rule priority {r.priority} fwmark 0x{r.fwmark:x}/0xffffffff "
             + ("unreachable" if r.unreachable else f"lookup 0x{r.table:x}") for r in sorted(dp.rules)]
    ipsets = []
    for s in sorted(dp.ipsets):
        ipsets.append(f"create {s.name} hash:net family {_family(s.family)}")
        ipsets += [f"add {s.name} {m}" for m in sorted(s.members)]
    out = {"link": link, "routes": routes, "rules": rules, "ipsets": ipsets}
    for f in sorted({c.family for c in dp.chains}):
        out[f"iptables_v{f}"] = restore_text([c for c in dp.chains if c.family == f]).splitlines()
        out[f"nft_v{f}"] = nftscript.golden_text(nft_table, f, dp.ipsets, dp.chains).splitlines()
    return {name: "\n".join(lines) + "\n" for name, lines in out.items()}


def restore_text(chains: Iterable[Chain], drops: Iterable[Chain] = (), hooks: dict[tuple[str, str], list[str]] | None = None,
                 jumps: bool = False) -> str:
    """One `iptables-restore --noflush` script: each chain declared (which flushes it) and rewritten whole.

    With `jumps`, the jump from the built-in chain is moved to position 1: every existing copy is
    deleted (hooks = the current rules of each built-in chain) and one inserted at the top.
    """
    chains, drops = sorted(chains), sorted(drops)
    hooks = hooks or {}
    lines: list[str] = []
    for table in TABLES:
        mine = [c for c in chains if c.table == table]
        gone = [c for c in drops if c.table == table]
        if not mine and not gone:
            continue
        lines.append(f"*{table}")
        lines += [f":{c.name} - [0:0]" for c in mine]
        for c in mine:
            lines += [f"-A {c.name} {r}" for r in c.rules]
        for c in [*mine, *gone] if jumps else gone:
            for _ in range(sum(1 for r in hooks.get((table, c.hook), []) if c.hook and _is_jump(r, c.name))):
                lines.append(f"-D {c.hook} {jump_spec(c)}")
        if jumps:
            lines += [f"-I {c.hook} 1 {jump_spec(c)}" for c in mine]
        for c in gone:
            lines += [f"-F {c.name}", f"-X {c.name}"]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _is_jump(rule: str, chain: str) -> bool:
    return JUMP_COMMENT in rule and rule.rstrip().endswith(f"-j {chain}")


def ipset_script(create: Iterable[IPSet], add: Iterable[tuple[str, str]], delete: Iterable[tuple[str, str]] = (),
                 destroy: Iterable[str] = ()) -> str:
    """An `ipset restore -exist` script (creates are idempotent with -exist, adds/dels too)."""
    lines = []
    for s in create:
        lines.append(f"create {s.name} hash:net family {_family(s.family)} maxelem 1048576")
        lines += [f"add {s.name} {m}" for m in sorted(s.members)]
    lines += [f"add {n} {m}" for n, m in add]
    lines += [f"del {n} {m}" for n, m in delete]
    lines += [f"destroy {n}" for n in destroy]
    return "\n".join(lines) + "\n"
