import os

from hypothesis import settings

# CI runs the same examples every time (no flaky reds from a new random draw) and does not fail
# on slow examples when the machine is loaded; locally, hypothesis explores new inputs each run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
