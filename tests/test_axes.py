"""The axis algebra, operation by operation: what each one does to the channel classes."""

import pytest

from prunekit.graph.axes import AxisTable, NotRepresentable


def sizes(table, spec):
    return [[table.size(a) for a in segment] for segment in table.expand(spec)]


def test_unify_joins_classes_of_one_size_and_refuses_two():
    table = AxisTable()
    a, b, c = table.new(4), table.new(4), table.new(5)
    table.unify([[a]], [[b]])
    assert table.find(a) == table.find(b)
    with pytest.raises(NotRepresentable):
        table.unify([[a]], [[c]])


def test_product_is_row_major_and_expands_back():
    table = AxisTable()
    a, b = table.new(2), table.new(3)
    assert table.product([[a]], [[b]]) == [[a, b]]
    assert table.segment_size([a, b]) == 6
    assert table.product([[a], [b]], [[b]]) == [[a, b], [b, b]]


def test_cut_refines_every_member_of_the_class():
    table = AxisTable()
    whole, twin = table.fresh_spec(10), table.fresh_spec(10)
    table.unify(whole, twin)  # two tensors with the same channels
    first, second = table.cut(whole, [4])
    assert sizes(table, first) == [[4]] and sizes(table, second) == [[6]]
    assert sizes(table, twin) == [[4], [6]]  # the twin sees the cut too


def test_split_segment_factors_heads_from_head_dim():
    table = AxisTable()
    (segment,) = table.fresh_spec(12)
    outer, inner = table.split_segment(segment, 4)
    assert [table.size(a) for a in outer] == [3] and [table.size(a) for a in inner] == [4]
    assert sizes(table, [segment]) == [[3, 4]]


def test_fixing_a_class_fixes_its_parts_and_its_twins():
    table = AxisTable()
    whole, twin = table.fresh_spec(8), table.fresh_spec(8)
    table.unify(whole, twin)
    parts = table.cut(whole, [2])
    table.fix_spec(twin, "model output")
    assert all(table.fixed_reason(a) == "model output"
               for part in parts for segment in table.expand(part) for a in segment)


def test_a_fixed_reason_survives_unify():
    table = AxisTable()
    a, b = table.new(4, fixed="model input"), table.new(4)
    table.unify([[b]], [[a]])
    assert table.fixed_reason(b) == "model input"
