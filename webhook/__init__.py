"""Admission webhook for egressgateway.spidernet.io: defaulting (/mutate) and validation (/validate).

The decision is `webhook.review.review(request, view, config)`, a pure function of the
AdmissionRequest and a read-only view of cluster state; `webhook.app` only decodes and encodes.
"""
