"""Suite-wide settings: no background warm-up worker (symgrad.runtime.warmup) in tests, which make fresh caches by
the dozen and share two cores; tests/test_warmup.py runs the worker on purpose."""

import os

os.environ["SYMGRAD_WARMUP"] = "0"  # inherited by every subprocess a test starts
