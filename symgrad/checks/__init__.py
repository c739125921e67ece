"""Independent references the generated code is checked against: a forward evaluator that never runs compiler
code, and finite differences.
"""
