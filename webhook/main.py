"""`egress-webhook`: settle the serving certificate, then run gunicorn with webhook/gunicorn.conf.py.

Certificates: when --cert-dir holds tls.crt and tls.key (cert-manager, or a provided Secret
mounted there) they are served as they are and reloaded when they change. Otherwise the webhook
manages its own: a CA and serving certificate in the Secret --secret (shared by all replicas),
written to --runtime-cert-dir, the CA patched into both webhook configurations' caBundle, and
checked for renewal every --rotation-interval seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from egress_cni import logs, settings
from webhook import certs
from webhook.config import WebhookConfig

log = logging.getLogger("webhook.main")

CONF = Path(__file__).with_name("gunicorn.conf.py")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="egress-webhook", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=int(env("EGRESS_WEBHOOK_LISTEN_PORT", "9443")))
    p.add_argument("--bind", default=env("EGRESS_WEBHOOK_BIND", "0.0.0.0"), help="address to listen on")
    p.add_argument("--workers", type=int, default=int(env("EGRESS_WEBHOOK_WORKERS", "2")))
    p.add_argument("--threads", type=int, default=int(env("EGRESS_WEBHOOK_THREADS", "4")))
    p.add_argument("--cert-dir", default=env("TLS_CERT_DIR", "/etc/tls"), help="mounted tls.crt/tls.key, used when present")
    p.add_argument("--runtime-cert-dir", default=env("EGRESS_WEBHOOK_RUNTIME_CERT_DIR", "/tmp/egress-webhook-certs"),
                   help="where self-managed certificates are written for gunicorn")
    p.add_argument("--namespace", default=env("EGRESS_NAMESPACE", "egressgateway-system"))
    p.add_argument("--secret", default=env("EGRESS_WEBHOOK_SECRET", "egress-webhook-tls"))
    p.add_argument("--service", default=env("EGRESS_WEBHOOK_SERVICE", "egress-webhook"))
    p.add_argument("--host", action="append", default=[], help="extra certificate SAN (DNS name or IP); repeatable")
    p.add_argument("--mutating-configuration", default=env("EGRESS_WEBHOOK_MUTATING", "egressgateway-mutating"))
    p.add_argument("--validating-configuration", default=env("EGRESS_WEBHOOK_VALIDATING", "egressgateway-validating"))
    p.add_argument("--rotation-interval", type=float, default=60.0,
                   help="seconds between certificate checks; each is two GETs unless something must change "
                        "(a renewal, or a configuration created or replaced without our caBundle)")
    p.add_argument("--config", default=env(settings.CONFIG_ENV),
                   help="installation settings YAML (env EGRESS_CONFIG; docs/settings.md); flags and variables win over it")
    p.add_argument("--enable-ipv4", default=None,
                   help="accept IPv4 configuration, true/false (env EGRESS_ENABLE_IPV4, file enableIPv4; default true)")
    p.add_argument("--enable-ipv6", default=None,
                   help="accept IPv6 configuration, true/false (env EGRESS_ENABLE_IPV6, file enableIPv6; default true)")
    p.add_argument("--kubeconfig", default=env("EGRESS_WEBHOOK_KUBECONFIG") or env("KUBECONFIG"))
    p.add_argument("--cluster-state", default=env("EGRESS_WEBHOOK_CLUSTER_STATE"),
                   help="review against the objects in this YAML file instead of watching the API (offline/bench)")
    logs.add_arguments(p)
    return p.parse_args(argv)


def service_hosts(service: str, namespace: str) -> list[str]:
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local", f"{service}.{namespace}", service]


def settle_certificates(args: argparse.Namespace) -> Path:
    """The directory gunicorn serves tls.crt/tls.key from."""
    mounted_dir = Path(args.cert_dir)
    if certs.mounted(mounted_dir):
        log.info("serving mounted certificate", extra={"dir": str(mounted_dir)})
        return mounted_dir
    if args.cluster_state:
        raise SystemExit(f"egress-webhook: no tls.crt/tls.key in --cert-dir {mounted_dir} and no cluster to keep one in")
    from egress_cni import k8s

    client = k8s.Client.from_kubeconfig(args.kubeconfig, component="egress-webhook")
    settings = certs.SelfManaged(
        namespace=args.namespace, secret=args.secret,
        hosts=tuple(service_hosts(args.service, args.namespace) + list(args.host)),
        configurations=((k8s.MUTATING_WEBHOOKS, args.mutating_configuration), (k8s.VALIDATING_WEBHOOKS, args.validating_configuration)),
    )
    runtime = Path(args.runtime_cert_dir)
    certs.sync_self_managed(client, settings, runtime)
    certs.start_rotation(lambda: certs.sync_self_managed(client, settings, runtime), args.rotation_interval)
    return runtime


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # refuse a bad setting before starting workers; they get the resolved values through the environment
        installed = settings.load(args.config)
        log_level, log_format = logs.resolve(args.log_level, args.log_format)
        config = WebhookConfig.layered(installed, os.environ, enable_ipv4=args.enable_ipv4, enable_ipv6=args.enable_ipv6,
                                       namespace=args.namespace)
    except ValueError as exc:  # SettingsError included: the message names the key, flag or variable
        raise SystemExit(f"egress-webhook: {exc}") from None
    logs.setup(log_level, log_format)
    for note in installed.notes:
        log.warning("setting has no effect", extra={"note": note})
    os.environ.update({**config.to_env(), logs.LEVEL_ENV: log_level, logs.FORMAT_ENV: log_format})
    cert_dir = settle_certificates(args)
    os.environ.update({
        "EGRESS_WEBHOOK_LISTEN_PORT": str(args.port), "EGRESS_WEBHOOK_BIND": args.bind,
        "EGRESS_WEBHOOK_WORKERS": str(args.workers), "EGRESS_WEBHOOK_THREADS": str(args.threads),
        "EGRESS_WEBHOOK_CERT_DIR": str(cert_dir),
    })
    for key, value in (("EGRESS_WEBHOOK_KUBECONFIG", args.kubeconfig), ("EGRESS_WEBHOOK_CLUSTER_STATE", args.cluster_state)):
        if value:
            os.environ[key] = value
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["egress-webhook", "-c", str(CONF)]
    WSGIApplication("%(prog)s [OPTIONS]").run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
