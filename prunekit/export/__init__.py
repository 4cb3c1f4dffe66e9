"""What leaves prunekit: checkpoints (``saving``: ``pk.save``/``pk.load``) and deployment
formats checked after export (``formats``: ONNX, ``torch.export``).
"""
