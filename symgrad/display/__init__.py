"""The derivation as people read it: LaTeX equations (derivation) and a standalone HTML/PNG page (page)."""
