"""The streamed orchestrator: a Hugging Face checkpoint pruned block by block, one block's
weights in memory at a time (``orchestrator``; the hidden size in ``hidden``).
"""
