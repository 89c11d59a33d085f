"""Admission webhook latency under load, over TLS, against gunicorn as deployed (2 gthread workers).

Workload: validation of policy CREATEs against a cluster state of `--policies` existing policies
(default 5,000, issue 14) in N/50 namespaces over 11 gateways: a mix of podSelector (some with
matchExpressions) and podSubnet policies, 1-4 destSubnets each, some naming an EIP or using the node
IP, some at another priority, 1 % EgressClusterPolicies selecting namespaces by label
(`cluster_state`). The client sends three reviews in turn, each admitted after the conflict rules
walked its candidates (`review_bodies`): a podSelector policy, a podSubnet policy naming an EIP, and
a cluster policy selecting a tenth of the namespaces. One AdmissionReview per POST on keep-alive
connections, as the API server sends them.

1. Open loop: requests are scheduled at a fixed rate (default 200/s) from a separate client
   process over 8 keep-alive connections; latency is measured from each request's *scheduled*
   time, so a stalled server is charged for the queue it causes (no coordinated omission).
2. Closed loop: 8 connections send back to back for a while; requests/s is the maximum
   sustained throughput.

Peer, measured in the same run on the same gunicorn config, TLS and client: an allow-all webhook
that decodes the review and answers `allowed: true` without looking at it (the transport floor).
Ratios ours/peer show what the rules cost on top of HTTP + TLS + JSON.

Both server and client share this 2-core machine with whatever else runs on it: the phases run in
alternating rounds, per-round p99s are printed, and the verdict (p99 <= 10 ms at 200 req/s) is on
the median round, with the pooled p99 beside it.

Before the load, the pure review time of each body (and of a cluster policy selecting every
namespace, which walks every policy; not in the mix) is measured in this process and printed.

The cache's initial sync against a real kube-apiserver is measured by bench/webhook_sync.py.

Run: .venv/bin/python bench/webhook.py [--policies 5000] [--rate 200] [--duration 30] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import itertools
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from egress_cni.api import API_VERSION  # noqa: E402

TARGET_P99_MS = 10.0
SCRATCH: list[Path] = []  # directories outside the work dir, removed at exit


# --- the peer: an allow-all webhook -------------------------------------------------------------


def allow_all_app() -> Any:
    """gunicorn app factory for the peer (same Flask, same JSON decode, no rules)."""
    from flask import Flask, Response, request

    app = Flask("allow-all")

    @app.post("/validate")
    def validate() -> Response:
        review = json.loads(request.get_data())
        body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": True}}
        return Response(json.dumps(body), mimetype="application/json")

    @app.get("/readyz")
    def readyz() -> Response:
        return Response("ok\n")

    return app


# --- workload -----------------------------------------------------------------------------------

GATEWAYS = 10  # besides `default`; policies are spread over them
POLICIES_PER_NAMESPACE = 50


def gateway(name: str, pool: str, default: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "EgressGateway", "metadata": {"name": name},
            "spec": {"ippools": {"ipv4": [pool], "ipv4DefaultEIP": default},
                     "nodeSelector": {"selector": {"matchLabels": {"egressgateway": "true"}}}}}


def _block(index: int, prefix: int) -> str:
    """The `index`-th /prefix block of 100.64.0.0/10 (distinct destinations for every policy)."""
    size = 1 << (32 - prefix)
    return f"{ipaddress.IPv4Address(int(ipaddress.IPv4Address('100.64.0.0')) + index * size)}/{prefix}"


def existing_policy(p: int, namespaces: int) -> dict[str, Any]:
    """The p-th existing EgressPolicy: 70 % podSelector (a third of them with matchExpressions), 30 %
    podSubnet; 1-4 destSubnets of their own; a quarter name an EIP of their namespace, some use the
    node IP; one in seven has priority 10. Conflict-free among themselves, as a cluster admitted them."""
    ns, g = p % namespaces, p % GATEWAYS
    if p % 10 < 7:
        selector: dict[str, Any] = {"matchLabels": {"app": f"app{p}"}}
        if p % 3 == 0:
            selector["matchExpressions"] = [{"key": "tier", "operator": "In", "values": ["web", "api"]}]
        applied: dict[str, Any] = {"podSelector": selector}
    else:
        applied = {"podSubnet": [f"10.{200 + ns % 50}.{p // namespaces % 256}.0/28"]}
    eip: dict[str, Any] = {"allocatorPolicy": "default", "useNodeIP": p % 4 == 1}
    if p % 4 == 0:  # an EIP of its own namespace: sharing across namespaces needs the gateway's consent
        eip["ipv4"] = f"10.{100 + g}.{1 + ns // 250}.{1 + ns % 250}"
    spec: dict[str, Any] = {"egressGatewayName": f"gw{g}", "appliedTo": applied, "egressIP": eip,
                            "destSubnet": [_block(p * 4 + i, 26) for i in range(1 + p % 4)]}
    if p % 7 == 0:
        spec["priority"] = 10
    return {"apiVersion": API_VERSION, "kind": "EgressPolicy", "metadata": {"name": f"p{p}", "namespace": f"ns{ns}"},
            "spec": spec}


def existing_cluster_policy(c: int) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "EgressClusterPolicy", "metadata": {"name": f"c{c}"},
            "spec": {"egressGatewayName": f"gw{c % GATEWAYS}",
                     "appliedTo": {"namespaceSelector": {"matchLabels": {"team": f"t{c % 10}"}},
                                   "podSelector": {"matchLabels": {"app": f"capp{c}"}}},
                     "destSubnet": [_block(c, 24).replace("100.", "101.", 1)]}}


def namespace_count(policies: int) -> int:
    return max(1, policies // POLICIES_PER_NAMESPACE)


def cluster_state(policies: int) -> list[dict[str, Any]]:
    """`policies` existing policies (1 % of them EgressClusterPolicies selecting namespaces by team)
    in policies/50 namespaces, over 10 gateways with a /16 pool each and `default`."""
    namespaces = namespace_count(policies)
    clustered = policies // 100
    objects = [gateway("default", "10.6.168.201-10.6.168.205", "10.6.168.201")]
    objects += [gateway(f"gw{g}", f"10.{100 + g}.0.0/16", f"10.{100 + g}.0.1") for g in range(GATEWAYS)]
    objects += [{"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": f"ns{n}", "labels": {"kubernetes.io/metadata.name": f"ns{n}", "team": f"t{n % 10}"}}}
                for n in range(namespaces)]
    objects += [existing_policy(p, namespaces) for p in range(policies - clustered)]
    objects += [existing_cluster_policy(c) for c in range(clustered)]
    return objects


def review_bodies(policies: int) -> list[bytes]:
    """The CREATEs the client sends in turn, each admitted after walking its candidates:
    1. an EgressPolicy by podSelector with the default EIP (its namespace's policies + cluster policies);
    2. an EgressPolicy by podSubnet naming an EIP: its pods overlap every candidate's, so every
       destination list is compared, and the EIP is looked up among every namespace's policies;
    3. an EgressClusterPolicy selecting a tenth of the namespaces: every policy is a candidate."""
    last = f"ns{namespace_count(policies) - 1}"
    by_selector = {"egressGatewayName": "default", "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}},
                   "destSubnet": ["192.168.0.0/16"], "egressIP": {"allocatorPolicy": "default", "useNodeIP": False}}
    by_subnet = {"egressGatewayName": "gw1", "appliedTo": {"podSubnet": ["10.250.0.0/24"]},
                 "destSubnet": ["198.18.0.0/15", "192.0.2.0/24"],
                 "egressIP": {"ipv4": "10.101.255.7", "allocatorPolicy": "default", "useNodeIP": False}}
    cluster = {"egressGatewayName": "gw2", "destSubnet": ["198.51.100.0/24"],
               "appliedTo": {"namespaceSelector": {"matchLabels": {"team": "t3"}},
                             "podSelector": {"matchLabels": {"app": "batch"}}}}
    return [review_body("EgressPolicy", "egresspolicies", "ns3", by_selector),
            review_body("EgressPolicy", "egresspolicies", last, by_subnet),
            review_body("EgressClusterPolicy", "egressclusterpolicies", "", cluster)]


def review_body(kind: str, resource: str, namespace: str, spec: dict[str, Any]) -> bytes:
    meta = {"name": "new", "namespace": namespace} if namespace else {"name": "new"}
    obj = {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}
    request = {"uid": str(uuid.uuid4()), "kind": {"group": "egressgateway.spidernet.io", "version": "v1beta1", "kind": kind},
               "resource": {"group": "egressgateway.spidernet.io", "version": "v1beta1", "resource": resource},
               "operation": "CREATE", "name": "new", "namespace": namespace, "object": obj, "oldObject": None,
               "userInfo": {"username": "admin", "groups": ["system:masters"]}, "dryRun": False}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}).encode()


# --- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(kind: str, work: Path, policies: int) -> tuple[subprocess.Popen[bytes], int]:
    import yaml

    from webhook import certs

    cert_dir = work / "certs"
    if not certs.mounted(cert_dir):
        certs.write_cert_dir(certs.new_bundle(["127.0.0.1"]), cert_dir)
    port = free_port()
    # tmpfs, as gunicorn.conf.py chooses by default (mmap'd metric files on a disk stall on writeback)
    metrics_dir = Path(tempfile.mkdtemp(prefix=f"bench-webhook-metrics-{kind}-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    SCRATCH.append(metrics_dir)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(PYTHONPATH=str(REPO), PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), LOG_LEVEL="WARNING",
               EGRESS_WEBHOOK_CERT_DIR=str(cert_dir), EGRESS_WEBHOOK_BIND="127.0.0.1", EGRESS_WEBHOOK_PORT=str(port))
    if kind == "ours":
        state = work / "state.yaml"
        state.write_text(yaml.safe_dump_all(cluster_state(policies)))
        argv = [sys.executable, "-m", "webhook.main", "--cert-dir", str(cert_dir), "--cluster-state", str(state),
                "--bind", "127.0.0.1", "--port", str(port)]
    else:
        argv = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "webhook" / "gunicorn.conf.py"), "bench.webhook:allow_all_app()"]
    log = (work / f"{kind}.log").open("wb")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    context = client_context(cert_dir / "ca.crt")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} server exited: see {work / f'{kind}.log'}")
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{kind} server not ready")


def server_side_times(port: int, ca_file: Path) -> dict[str, float]:
    """Review time as the server measured it (histogram in /metrics): tells app time from transport."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(ca_file), timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith('egress_webhook_review_seconds_bucket{') and 'action="validate"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    total = buckets.get(float("inf"), 0.0)
    p99 = next((le for le, n in sorted(buckets.items()) if total and n >= 0.99 * total), float("nan"))
    return {"count": total, "p99_bucket_ms": p99 * 1000, "over_10ms": total - buckets.get(0.01, 0.0)}


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the client (runs in its own process) -------------------------------------------------------


def client_context(ca_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    """Open loop (`rate` set) or closed loop (`rate` 0) over `connections` keep-alive connections."""
    context = client_context(Path(spec["ca_file"]))
    bodies = review_bodies(int(spec["policies"]))
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    rate, duration, connections = float(spec["rate"]), float(spec["duration"]), int(spec["connections"])
    total = int(rate * duration) if rate else 0
    latencies: list[float] = []
    errors = [0]
    worst = [0.0, 0.0, 0.0]  # longest single round trip: (seconds, sent at offset, waited before sending)
    counter = itertools.count()
    lock = threading.Lock()
    start = time.perf_counter() + 0.5
    stop_at = start + duration

    def worker() -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", spec["port"], context=context, timeout=30)
        local: list[float] = []
        while True:
            i = next(counter)
            if rate:
                if i >= total:
                    break
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            else:
                due = time.perf_counter()
                if due >= stop_at:
                    break
                if due < start:
                    time.sleep(start - due)
                    due = time.perf_counter()
            sent = time.perf_counter()
            try:
                conn.request("POST", "/validate", bodies[i % len(bodies)], headers)
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200 and b'"allowed":true' in data.replace(b" ", b"")
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPSConnection("127.0.0.1", spec["port"], context=context, timeout=30)
            finished = time.perf_counter()
            local.append(finished - due)
            if finished - sent > worst[0]:
                with lock:
                    if finished - sent > worst[0]:
                        worst[:] = [finished - sent, sent - start, sent - due]
            if not ok:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    out = summarise(latencies, len(latencies), errors[0], elapsed) | {"elapsed": elapsed, "worst": worst}
    if spec.get("raw"):
        out["latencies"] = latencies
    return out


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))] * 1000


def client_process(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load generator in a separate process so it does not share the server's GIL."""
    out = subprocess.run([sys.executable, __file__, "--client", json.dumps(spec)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# --- main ---------------------------------------------------------------------------------------


def pure_review_times(policies: int, repeats: int = 200) -> dict[str, float]:
    """Median milliseconds of `webhook.app.answer` (decode, review, envelope) per body, no transport."""
    from webhook.app import answer
    from webhook.config import WebhookConfig
    from webhook.view import MemoryView

    view, config = MemoryView.of(cluster_state(policies)), WebhookConfig.from_env()
    every_namespace = review_body("EgressClusterPolicy", "egressclusterpolicies", "", {
        "egressGatewayName": "gw2", "destSubnet": ["198.51.100.0/24"], "appliedTo": {"podSelector": {"matchLabels": {"app": "batch"}}}})
    labels = ("EgressPolicy, podSelector", "EgressPolicy, podSubnet + named EIP", "EgressClusterPolicy, a tenth of the namespaces",
              "EgressClusterPolicy, every namespace (not in the mix)")
    out = {}
    for label, body in zip(labels, [*review_bodies(policies), every_namespace], strict=True):
        times = []
        for _ in range(repeats if "every" not in label else repeats // 10):
            started = time.perf_counter()
            response = answer(body, view, config, "validate")["response"]
            times.append((time.perf_counter() - started) * 1000)
            if not response["allowed"]:
                raise SystemExit(f"{label}: denied: {response.get('status')}")
        out[label] = statistics.median(times)
    return out



def summarise(latencies: list[float], count: int, errors: int, elapsed: float) -> dict[str, Any]:
    latencies = sorted(latencies)
    return {"count": count, "errors": errors, "rps": count / elapsed if elapsed else 0.0,
            "p50_ms": pct(latencies, 50), "p90_ms": pct(latencies, 90), "p99_ms": pct(latencies, 99),
            "max_ms": latencies[-1] * 1000 if latencies else 0.0}


def measure(work: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Both servers up at once; short phases alternate between them so load drift hits both alike."""
    servers = {kind: start_server(kind, work, args.policies) for kind in ("ours", "peer")}
    try:
        base = {"ca_file": str(work / "certs" / "ca.crt"), "connections": 8, "policies": args.policies}
        for _, port in servers.values():
            client_process({**base, "port": port, "rate": 100, "duration": 2})  # warm up: imports, caches
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {k: {"open": [], "closed": []} for k in servers}
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for phase, rate, duration in (("open", args.rate, args.duration / args.rounds),
                                          ("closed", 0, args.closed_duration / args.rounds)):
                for kind in order:
                    spec = {**base, "port": servers[kind][1], "rate": rate, "duration": duration, "raw": True}
                    raw[kind][phase].append(client_process(spec))
        out: dict[str, dict[str, Any]] = {"server": server_side_times(servers["ours"][1], work / "certs" / "ca.crt")}
        for kind, phases in raw.items():
            out[kind] = {}
            for phase, runs in phases.items():
                merged = summarise([x for r in runs for x in r["latencies"]], sum(r["count"] for r in runs),
                                   sum(r["errors"] for r in runs), sum(r["elapsed"] for r in runs))
                merged["round_p99_ms"] = [r["p99_ms"] for r in runs]
                merged["round_rps"] = [r["rps"] for r in runs]
                merged["round_worst_ms"] = [r["worst"][0] * 1000 for r in runs]
                out[kind][phase] = merged
        return out
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
        for path in SCRATCH:
            shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", type=int, default=5000, help="existing policies in the cluster state")
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests per second")
    p.add_argument("--duration", type=float, default=30.0, help="open-loop seconds per server (split over the rounds)")
    p.add_argument("--closed-duration", type=float, default=15.0, help="closed-loop seconds per server (split over the rounds)")
    p.add_argument("--rounds", type=int, default=5, help="alternating ours/peer phases")
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument("--client", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        print(json.dumps(run_client(json.loads(args.client))))
        return 0
    if args.quick:
        args.duration, args.closed_duration, args.rounds = 6.0, 4.0, 2
    print(f"{args.policies} existing policies; pure review time in this process, median of 200 (ms):")
    for label, ms in pure_review_times(args.policies).items():
        print(f"  {label:<52} {ms:7.3f}")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp:
        results = measure(Path(tmp), args)
    ours, peer = results["ours"], results["peer"]
    print(f"machine: {os.cpu_count()} cores, 1-min load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after "
          "(other work on the machine inflates tails for both servers alike)")
    print(f"webhook validation over TLS, gunicorn 2 gthread workers, 8 keep-alive connections, client in its own process,\n"
          f"{args.rounds} rounds alternating ours/peer; open loop at {args.rate:.0f} req/s, {args.duration:.0f} s per server "
          "(latency from scheduled send time):")
    print(f"  {'':6} {'sent':>6} {'errors':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}   p99 per round (median)")
    for kind in ("ours", "peer"):
        r = results[kind]["open"]
        rounds = ", ".join(f"{x:.1f}" for x in r["round_p99_ms"])
        print(f"  {kind:6} {r['count']:>6} {r['errors']:>6} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['max_ms']:>8.2f}   {rounds} ({statistics.median(r['round_p99_ms']):.1f})")
    print(f"  ratio ours/peer: p50 {ours['open']['p50_ms'] / peer['open']['p50_ms']:.2f}x, "
          f"p99 {ours['open']['p99_ms'] / peer['open']['p99_ms']:.2f}x")
    # Verdict on the median round: a burst of other work on this shared machine spoils one round for
    # whichever server runs then; the pooled p99 (printed too) counts such a burst against us.
    p99 = statistics.median(ours["open"]["round_p99_ms"])
    verdict = "PASS" if p99 <= TARGET_P99_MS and not ours["open"]["errors"] else "FAIL"
    print(f"  target p99 <= {TARGET_P99_MS:.0f} ms at {args.rate:.0f} req/s: median round {p99:.2f} ms -> {verdict} "
          f"(pooled over all rounds {ours['open']['p99_ms']:.2f} ms)")
    for kind in ("ours", "peer"):
        worst = ", ".join(f"{x:.0f}" for x in results[kind]["open"]["round_worst_ms"])
        print(f"  {kind:6} longest single round trip per round (ms): {worst}")
    server = results["server"]
    print(f"  server side (ours, /metrics histogram over every phase): {server['count']:.0f} reviews, p99 <= "
          f"{server['p99_bucket_ms']:g} ms bucket, {server['over_10ms']:.0f} over 10 ms")
    print(f"closed loop, {args.closed_duration:.0f} s per server (maximum sustained throughput):")
    for kind in ("ours", "peer"):
        r = results[kind]["closed"]
        print(f"  {kind:6} {r['rps']:>8.0f} req/s (median round {statistics.median(r['round_rps']):.0f})  "
              f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  errors {r['errors']}")
    print(f"  ratio ours/peer throughput: {ours['closed']['rps'] / peer['closed']['rps']:.2f}x")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
