"""The coverage contract on real architectures: a representative subset of every family
(``model_cases.CI_SUBSET``: each design of torchvision's classifiers at its smallest, one or
two of each other family). The benchmark runs all 190 models (``benchmarks/coverage.py``,
results in ``benchmarks/results/coverage.md``), the large variants the tests leave out among
them.

Each model is pruned at 0.5 with FilterPruning("l1") through the public API with nothing per
model beyond its example inputs; output shapes must be unchanged, parameters reduced, masked
and pruned outputs equal, and a backward pass must reach the parameters. The pruned model is
then exported to ONNX and checked in ONNX Runtime against PyTorch (``pk.export``).
"""

import pytest

from contracts.coverage import check_case, release_memory
from contracts.model_cases import EXPORT_UNSUPPORTED, UNSUPPORTED, ci_cases


def _param(case):
    marks = ([pytest.mark.xfail(reason=UNSUPPORTED[case.id], strict=True)]
             if case.id in UNSUPPORTED else [])
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(autouse=True)
def free_each_model():
    yield
    release_memory()  # the next model starts from what the suite needs, not this one's peak


@pytest.mark.slow
@pytest.mark.parametrize("case", [_param(c) for c in ci_cases()])
def test_model_prunes_verifies_and_exports(case, tmp_path):
    row = check_case(case, export_to=tmp_path)
    assert row["params_after"] < row["params_before"]
    assert row["flops_after"] < row["flops_before"]
    assert row["onnx"] is not None or case.id in EXPORT_UNSUPPORTED
