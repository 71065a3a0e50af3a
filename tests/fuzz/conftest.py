"""The fuzz suite's hypothesis profile: the same examples on every run, a fixed budget.

``derandomize`` seeds each property from its own source, so CI and a developer see the same
examples (and a failure found once is found again), with no example database to carry
between runs. The budget (600 examples a property) keeps the whole suite near 40 s on a
2-core machine; ``TRIOS3_FUZZ_PROFILE=deep`` runs 7 500 a property, randomised, for a session
of hunting (about ten minutes).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "trios3-fuzz",
    derandomize=True,
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "deep",
    max_examples=7500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("TRIOS3_FUZZ_PROFILE", "trios3-fuzz"))
