"""The ``prunekit`` command line (``commands``), where it finds models and data (``sources``),
and the demo model and dataset (``demo``, ``data``)."""
