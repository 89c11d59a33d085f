"""The nftables form of a `Dataplane`'s chains and sets: our own table per family (pure).

The `nftables` engine keeps every rule and set of ours in `table ip <prefix>` / `table ip6 <prefix>`,
whose base chains hook in one priority step before iptables' tables (raw -301, mangle -151, filter
-1, srcnat 99). Nobody else's rule sits in these chains, so no rule inserted at the top of a built-in
iptables chain (an `ACCEPT` included) comes before ours: an accept there ends only that table's
chain, and ours has already run. The rules are translated from the iptables specs compute writes
(one vocabulary, one decision); an unknown token is an error, never a silently dropped match.

One difference from iptables needs care: an `accept` in our nat chain does not end the other nat
chains of the hook, so the tunnel's "no NAT" is an identity SNAT (`snat to ip saddr`). A binding
set up, the kernel runs no later nat chain for the flow: no CNI masquerade rewrites tunnel traffic.
"""

from __future__ import annotations

from egress_cni.dataplane.plan import IPV4, Chain, IPSet

FULL = "0xffffffff"
# (iptables table, built-in chain) -> (nft chain type, hook, priority): one step before iptables'
BASE = {
    ("raw", "PREROUTING"): ("filter", "prerouting", -301),
    ("raw", "OUTPUT"): ("filter", "output", -301),
    ("mangle", "PREROUTING"): ("filter", "prerouting", -151),
    ("mangle", "POSTROUTING"): ("filter", "postrouting", -151),
    ("filter", "FORWARD"): ("filter", "forward", -1),
    ("nat", "POSTROUTING"): ("nat", "postrouting", 99),
}
_MODULES = {"set", "conntrack", "mark", "connmark", "mac", "comment", "tcp", "udp"}


class Untranslatable(ValueError):
    """A rule spec outside the vocabulary this module knows."""


def nft_family(family: int) -> str:
    return "ip" if family == IPV4 else "ip6"


def chain_name(table: str, name: str) -> str:
    """Our chain `name` of iptables table `table` -> its name in our nft table (raw and mangle both
    have an EGRESS-PREROUTING)."""
    return f"{table}-{name}"


def split_chain_name(nft_name: str) -> tuple[str, str]:
    table, _, name = nft_name.partition("-")
    return table, name


def _mark(value: str, neg: bool, what: str) -> str:
    v, _, mask = value.partition("/")
    op = "!= " if neg else ""
    if not mask or int(mask, 16) == 0xFFFFFFFF:
        return f"{what} {op}{v}"
    return f"{what} & {mask} {'!=' if neg else '=='} {v}"


def _ctstate(values: str, neg: bool) -> list[str]:
    out = []
    for v in values.split(","):
        if v in ("SNAT", "DNAT"):
            out.append(f"ct status & {v.lower()} == 0" if neg else f"ct status {v.lower()}")
        elif v in ("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"):
            out.append(f"ct state {'!= ' if neg else ''}{v.lower()}")
        else:
            raise Untranslatable(f"--ctstate {v}")
    return out


def _target(table: str, family: int, words: list[str]) -> str:
    target, args = words[0], words[1:]
    addr = "ip" if family == IPV4 else "ip6"
    simple = {"DROP": "drop", "RETURN": "return", "NOTRACK": "notrack", "MASQUERADE": "masquerade"}
    if target in simple and not args:
        return simple[target]
    if target == "ACCEPT" and not args:
        return f"snat to {addr} saddr" if table == "nat" else "accept"  # see the module docstring
    if target == "MARK" and args[:1] == ["--set-xmark"] and len(args) == 2 and args[1].endswith("/" + FULL):
        return f"meta mark set {args[1].split('/')[0]}"
    if target == "CONNMARK" and args[:1] == ["--set-xmark"] and len(args) == 2 and args[1].endswith("/" + FULL):
        return f"ct mark set {args[1].split('/')[0]}"
    if target == "CONNMARK" and args == ["--restore-mark", "--nfmask", FULL, "--ctmask", FULL]:
        return "meta mark set ct mark"
    if target == "SNAT" and args[:1] == ["--to-source"] and len(args) == 2:
        return f"snat to {args[1]}"
    if target == "TCPMSS" and args == ["--clamp-mss-to-pmtu"]:
        return "tcp option maxseg size set rt mtu"
    raise Untranslatable(f"-j {' '.join(words)}")


def nft_rule(spec: str, table: str, family: int, *, then: str = "") -> str:
    """One of our iptables rule specs (without `-A chain`) as an nft rule body, with a counter and
    its ownership comment; `then` is a statement after a non-terminal verdict (dataplane/nftcache.py)."""
    out, verdict, comment = _translate(spec, table, family)
    if verdict is None:
        raise Untranslatable(f"no target in {spec!r}")
    tail = f' comment "{comment}"' if comment else ""
    return " ".join([*out, "counter", verdict, *([then] if then else [])]) + tail


def nft_matches(spec: str, family: int) -> str:
    """The matches of a spec without a target, e.g. `-i egress.vxlan` -> `iifname "egress.vxlan"`."""
    out, verdict, _ = _translate(spec, "filter", family)
    if verdict is not None:
        raise Untranslatable(f"a target in {spec!r}")
    return " ".join(out)


def _translate(spec: str, table: str, family: int) -> tuple[list[str], str | None, str]:
    """(matches, verdict or None without a target, comment)."""
    words = spec.split()
    verdict: str | None = None
    addr = "ip" if family == IPV4 else "ip6"
    out: list[str] = []
    comment = ""
    proto = module = ""
    neg = False
    i = 0
    while i < len(words):
        w = words[i]
        arg = words[i + 1] if i + 1 < len(words) else ""
        if w == "!":
            neg = True
            i += 1
            continue
        if w == "-j":
            verdict = _target(table, family, words[i + 1:])
            break
        if w in ("-i", "-o"):
            name = arg[:-1] + "*" if arg.endswith("+") else arg
            out.append(f'{"iifname" if w == "-i" else "oifname"} {"!= " if neg else ""}"{name}"')
        elif w in ("-s", "-d"):
            out.append(f"{addr} {'saddr' if w == '-s' else 'daddr'} {'!= ' if neg else ''}{arg}")
        elif w == "-p":
            proto = arg
        elif w == "-m":
            if arg not in _MODULES:
                raise Untranslatable(f"-m {arg}")
            module = arg
        elif w == "--match-set":
            direction = words[i + 2]
            out.append(f"{addr} {'saddr' if direction == 'src' else 'daddr'} {'!= ' if neg else ''}@{arg}")
            i += 1
        elif w == "--ctdir":
            out.append(f"ct direction {arg.lower()}")
        elif w == "--ctstate":
            out += _ctstate(arg, neg)
        elif w == "--ctstatus" and arg == "CONFIRMED":
            out.append("ct status & confirmed == 0" if neg else "ct status confirmed")
        elif w == "--mark":
            out.append(_mark(arg, neg, "ct mark" if module == "connmark" else "meta mark"))
        elif w == "--mac-source":
            out.append(f"ether saddr {'!= ' if neg else ''}{arg}")
        elif w == "--comment":
            comment = arg
        elif w == "--dport" and proto in ("tcp", "udp"):
            out.append(f"{proto} dport {'!= ' if neg else ''}{arg}")
            proto = ""
        elif w == "--tcp-flags" and proto == "tcp" and arg == "SYN,RST" and words[i + 2] == "SYN":
            out.append("tcp flags & (syn | rst) == syn")
            proto = ""
            i += 1
        else:
            raise Untranslatable(f"{w} in {spec!r}")
        neg = False
        i += 2
    if proto:
        out.append(f"meta l4proto {proto}")
    return out, verdict, comment


def set_decl(s: IPSet) -> str:
    kind = "ipv4_addr" if s.family == IPV4 else "ipv6_addr"
    return f"{{ type {kind}; flags interval; }}"


def chain_decl(c: Chain) -> str:
    kind, hook, priority = BASE[(c.table, c.hook)]
    return f"{{ type {kind} hook {hook} priority {priority}; policy accept; }}"
