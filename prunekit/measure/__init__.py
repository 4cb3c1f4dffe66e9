"""Honest numbers: parameters and FLOPs (``model``) and latency timed interleaved
(``latency``).
"""
