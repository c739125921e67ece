"""Stage 1: spec text -> checked, typed expressions (YAML with line numbers, the expression builder)."""
