"""The chained CNI plugin. Import-light by design: every pod start pays for what this package imports."""
