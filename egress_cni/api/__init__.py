"""The typed model of `egressgateway.spidernet.io/v1beta1` (pure: no I/O, no third-party imports)."""

GROUP = "egressgateway.spidernet.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
