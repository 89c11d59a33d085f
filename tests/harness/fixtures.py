"""pytest plugin with the control-plane fixtures (filled in by the harness work)."""
