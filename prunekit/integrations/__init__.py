"""Old home of the model-family adapters, kept so that imports written for it still work;
they are in ``prunekit.adapters`` now."""
