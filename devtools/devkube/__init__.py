"""A real kube-apiserver + etcd (and the certificates, kubeconfigs and processes around them) for
the sandbox and the tests; built by hack/build-kube.sh, never used in a production install."""
