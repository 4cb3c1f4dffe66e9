"""What tests and benchmarks share: the model lists (``model_cases``) and the contracts every
model must satisfy (``coverage`` for any network, ``hf`` for Hugging Face architectures). The
tests assert them on a subset in CI; the benchmarks run them on everything and write result
files. Not part of the installed package."""
