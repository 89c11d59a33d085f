"""The node agent: sources -> compute -> diff -> apply, plus liveness, registry acks and metrics."""
