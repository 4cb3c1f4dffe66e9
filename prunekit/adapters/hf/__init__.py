"""Hugging Face adapters: reading and writing its checkpoints (``checkpoint``,
``conversion``, ``skeleton``, ``memory``, ``activations``), its config upkeep (``config``,
registered with ``surgery.configs``) and the classic pruner classes (``pruners``).
"""
