"""Standard-library-only building blocks shared by the CNI plugin and the node agent.

The plugin runs once per pod start in a trimmed runtime (see egress_cni/cni/install.py), so everything
here imports only the standard library and stays cheap to import: `jsonlite` (JSON without the `json`
package), `record` (a frozen record without `dataclasses`), `netlink` (rtnetlink over a raw socket), `netns` (setns by path),
`command` (the one place that runs a program). An import-linter contract (.importlinter) holds this.
"""
