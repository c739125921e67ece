"""Stage 3: kernel IR -> a generated Python module, one package per backend behind the registry below."""
