"""Dataplane: compute the node's desired kernel state (pure), diff it, apply it."""
