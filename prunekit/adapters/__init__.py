"""Model-family adapters: Hugging Face (``hf``) and Ultralytics (``ultralytics``), each
imported on demand, so prunekit itself needs neither library."""
