"""Helpers that hand a pruned model back to the tool it came from (imported on demand, so
prunekit itself needs none of those tools)."""
