"""Shared core, imported by every stage and importing none: errors, atomic writes, geometry, timing, distributed
helpers, metrics and the networks."""
