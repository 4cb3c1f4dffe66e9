"""Candidates: what a network can lose. Channels are the coupled groups of
``graph.dependency``; layers and blocks are found here (``layers``).
"""
