"""Deprecated: ``prunekit.integrations.ultralytics`` moved to ``prunekit.adapters.ultralytics``."""

import warnings

from ..adapters.ultralytics import load_network_safely, pruned_trainer  # noqa: F401

warnings.warn("prunekit.integrations.ultralytics moved to prunekit.adapters.ultralytics; "
              "import it from there", DeprecationWarning, stacklevel=2)
