"""Settings every test shares."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_width_table(tmp_path_factory):
    """Latency targets keep a table of layer timings on disk; the tests keep theirs in a
    folder of their own, not in the user's cache, and start without one."""
    saved = os.environ.get("PRUNEKIT_CACHE_DIR")
    os.environ["PRUNEKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("prunekit-cache"))
    yield
    if saved is None:
        os.environ.pop("PRUNEKIT_CACHE_DIR", None)
    else:
        os.environ["PRUNEKIT_CACHE_DIR"] = saved
