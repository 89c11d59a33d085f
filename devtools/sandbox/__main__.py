"""`make sandbox`: a 3-node cluster in network namespaces on this machine, running the walkthrough.

    python -m devtools.sandbox            # up, walkthrough, failover, tear down
    python -m devtools.sandbox --keep     # ... and leave it running (prints how to use kubectl)
    python -m devtools.sandbox --down     # tear a kept sandbox down
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from devtools.sandbox.cluster import Sandbox
from devtools.sandbox.plan import CNI_MODES, PREFIX, STATE_DIR, build_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running")
    parser.add_argument("--down", action="store_true", help="tear down a kept sandbox and exit")
    parser.add_argument("--no-components", action="store_true", help="do not install the chart (no agents, controller, webhook)")
    parser.add_argument("--no-walkthrough", action="store_true", help="only bring the cluster up")
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR, help="where its state lives (one sandbox per dir)")
    parser.add_argument("--prefix", default=PREFIX, help="its namespaces' prefix (at most 9 characters)")
    parser.add_argument("--cni", choices=CNI_MODES, default="macvlan",
                        help="the nodes' primary CNI: macvlan (the seed's underlay, default), flannel, bridge")
    args = parser.parse_args(argv)
    if args.down:
        sandbox = Sandbox.attach(args.state_dir) if (args.state_dir / "state.json").exists() else \
            Sandbox(build_plan(state_dir=args.state_dir, prefix=args.prefix))
        started = time.monotonic()
        report = sandbox.down()
        print(f"sandbox down in {time.monotonic() - started:.1f}s: {report}")
        return 0
    sandbox = Sandbox(build_plan(state_dir=args.state_dir, prefix=args.prefix, cni=args.cni),
                      components=not args.no_components)
    from devtools.sandbox.walkthrough import Walkthrough, kubectl_hint

    started = time.monotonic()
    code = 0
    try:
        sandbox.up()
        print(f"==> sandbox up in {time.monotonic() - started:.1f}s (logs: {sandbox.log_dir})")
        if not args.no_walkthrough:
            Walkthrough(sandbox).run()
    except Exception as error:  # report, then still tear down (unless kept) so the host is clean
        print(f"!!! {error}", file=sys.stderr)
        code = 1
    for item in sandbox.pending:
        print(f"pending: {item}")
    if args.keep:
        print(f"sandbox kept. kubectl: {kubectl_hint(sandbox)} get pods -A\n"
              f"tear down: {sys.executable} -m devtools.sandbox --down --state-dir {args.state_dir}")
        return code
    down_started = time.monotonic()
    report = sandbox.down()
    print(f"==> sandbox down in {time.monotonic() - down_started:.1f}s: {report}")
    return code


if __name__ == "__main__":
    sys.exit(main())
