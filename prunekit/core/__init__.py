"""The ground every stage stands on: calling a model (``calls``), what a batch is
(``batches``), checks on arguments (``arguments``) and running on several processes
(``distributed``).
"""
