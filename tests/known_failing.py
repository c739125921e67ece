"""The one list of known failures (xfail, strict=False) found by the differential fuzzer and kept as regressions.

Each key is a spec in tests/regressions/ (file stem), or `stable_<id>` for a case of tests/test_stable_forms.py.
When a compiler fix lands, delete its line here: the regression then has to pass. `FUZZ` is the xfail reason of
the random differential test while any class is open.
"""

from __future__ import annotations

KNOWN_FAILING: dict[str, str] = {}

# Specs the fuzzer found whose right answer is a one-line FILE:LINE refusal: a spec name that generated kernels
# read as a global (names.RESERVED). Each maps to a fragment of the expected message.
EXPECTED_REFUSALS: dict[str, str] = {
    "spec_name_shadows_module_global": "generated code uses",
    "spec_name_shadows_python_builtin": "generated code uses",
}

FUZZ = "random specs still hit the known failure classes in KNOWN_FAILING (see tests/regressions/)"
