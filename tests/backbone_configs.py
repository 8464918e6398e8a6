"""Small settings for each backbone in tests: fast on 2 CPU cores, but every code path on.

``geognn.backbones.SMALL_SETTINGS`` (also what ``geognn doctor`` runs), plus what only the tests
need. One entry per name in geognn.BACKBONES (test_model.py checks that none is missing).
"""

from geognn.backbones import SMALL_SETTINGS

#: on top of SMALL_SETTINGS: FAENet's force head (its tag embedding is tested in
#: tests/test_faenet.py; the mixed batches here lack tags)
TEST_EXTRAS = {"faenet": dict(force_head=True)}

SMALL = {name: {**settings, **TEST_EXTRAS.get(name, {})} for name, settings in SMALL_SETTINGS.items()}
