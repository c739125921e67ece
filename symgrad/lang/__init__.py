"""The language's vocabulary, shared by every stage: the primitive table, the library of layers and losses,
reserved names.
"""
