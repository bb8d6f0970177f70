"""Hypothesis profiles: "ci" (more examples) when the CI env var is set, "dev" otherwise."""

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
