"""dpq.eval.diagnose: typed variants, their spelling, and the checks that name the fix."""

import pytest

from dpq.eval.diagnose import KINDS, VARIANTS, Variant, check_name, expand


@pytest.mark.parametrize("text", list(VARIANTS) + ["float-layers:3", "float-layers:0-5", "float-kind:down",
                                                   "float:model.layers.1.mlp.down_proj+model.layers.2.mlp.up_proj"])
def test_every_spelling_round_trips_through_the_type(text):
    v = Variant.parse(text)
    assert str(v) == text and Variant.parse(str(v)) == v


def test_parsed_variants_carry_typed_fields():
    assert Variant.parse("float-layers:2-4").layers == (2, 4)
    assert Variant.parse("float-kind:gate_up") == Variant("float-kind", arg="gate_up")
    assert Variant.parse("float:a.b+c.d").names == ("a.b", "c.d")
    assert Variant.parse("float-acts:qkv").kind == "float-acts"


@pytest.mark.parametrize("text,message", [("float-layers:x", "give a layer index N or a range N-M"),
                                          ("float-layers:5-2", "the range is empty"),
                                          ("float-kind:mlp", "unknown kind"), ("float-acts:proj", "unknown kind"),
                                          ("floats", "unknown variant"), ("float:", "unknown variant")])
def test_bad_names_are_refused_with_the_fix(text, message):
    with pytest.raises(ValueError, match=message):
        check_name(text)


def test_shorthands_expand_to_typed_variants_and_layers_are_checked():
    assert expand(["each-kind"], 4) == [Variant("float-kind", arg=k) for k in KINDS]
    assert [str(v) for v in expand(["each-layer", "w4a8"], 3)] == ["float-layers:0", "float-layers:1",
                                                                    "float-layers:2", "w4a8"]
    with pytest.raises(ValueError, match="the model has 3 decoder layers"):
        expand(["float-layers:1-3"], 3)
