"""Development tools that run from a source checkout and never ship: the wheel and the image hold
only egress_cni and webhook (setup.cfg's find config; tests/unit/test_packaging.py checks it).

- devtools.devkube: a real control plane (etcd + kube-apiserver, PKI, kubeconfigs) for tests and the sandbox;
- devtools.sandbox: `make sandbox`, the local multi-node cluster (`python -m devtools.sandbox`);
- devtools.scenario: loads a scenario directory into compute's inputs (golden tests, netns tests, benches).
"""
