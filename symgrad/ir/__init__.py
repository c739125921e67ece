"""Stage 2: expressions -> a statement graph, its reverse-mode derivation, and the lowered kernel IR every
backend prints.
"""
