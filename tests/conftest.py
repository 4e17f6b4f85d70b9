"""Settings shared by the whole suite: hypothesis' profiles for the fuzz tests.

``fedmol`` (the default, what CI runs): derandomised, so every run draws the same examples and CI
cannot fail on a new random one; no example database, so nothing is written to ``.hypothesis/``; no
shrinking, so a failure costs no more time than a pass (the failing example is printed as drawn).
Each fuzz test bounds its own examples and time. To explore with fresh random examples, and more
of them: ``HYPOTHESIS_PROFILE=explore FEDMOL_FUZZ_SCALE=20 .venv/bin/pytest tests/datasets/test_fuzz_readers.py
tests/scoring/test_fuzz_api.py`` (a failure prints the example and a blob to replay it with ``@reproduce_failure``).
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import Phase, settings

# Hypothesis caches the constants it finds in source files under its storage folder, ./.hypothesis by
# default: keep that out of the repository.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "fedmol-hypothesis"))

settings.register_profile("fedmol", derandomize=True, database=None, print_blob=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fedmol"))
