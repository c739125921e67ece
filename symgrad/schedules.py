"""`import symgrad.schedules` / `from symgrad.schedules import cosine`: the same module as `symgrad.schedules` (the
lazy attribute docs/api.md uses), symgrad.runtime.schedules, not a copy of it."""

import sys

from symgrad.runtime import schedules as _schedules

sys.modules[__name__] = _schedules
