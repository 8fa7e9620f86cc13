"""Every dimension kind: seeded sampling, variation that stays valid, validation errors."""

import random

import pytest

from spaces import Choice, GenomeError, Mask, Scale, WeightSet

KINDS = [
    Mask("m", length=12, min_keep=3),
    Choice("c", options=(3, 5, 7)),
    Choice("op", options=("none", "skip_connect", "nor_conv_3x3")),
    Scale("s", low=0.25, high=1.0, step=0.125),
    Scale("u", low=0.5, high=2.0),
    WeightSet("w", options=("float", "int8", "int4", "int2", "ternary", "binary")),
]


@pytest.mark.parametrize("dim", KINDS, ids=lambda d: d.name)
def test_sample_is_seeded_and_valid(dim):
    a = [dim.sample(random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = random.Random(1)
    for _ in range(200):
        v = dim.sample(rng)
        assert dim.validate(v) == v


@pytest.mark.parametrize("dim", KINDS, ids=lambda d: d.name)
def test_mutate_and_crossover_stay_valid(dim):
    rng = random.Random(3)
    changed = 0
    for _ in range(200):
        a, b = dim.sample(rng), dim.sample(rng)
        m = dim.mutate(a, rng, 0.5)
        changed += m != a
        c1, c2 = dim.crossover(a, b, rng)
        for v in (m, c1, c2):
            assert dim.validate(v) == v
    assert changed > 20  # mutation really moves


@pytest.mark.parametrize("dim", KINDS, ids=lambda d: d.name)
def test_json_roundtrip(dim):
    rng = random.Random(5)
    for _ in range(50):
        v = dim.sample(rng)
        assert dim.from_json(dim.to_json(v)) == v


def test_validation_errors_name_the_field():
    m = Mask("mask.s1", length=4, min_keep=2)
    with pytest.raises(GenomeError, match="mask.s1.*min_keep"):
        m.validate([1, 0, 0, 0])
    with pytest.raises(GenomeError, match="5 bits"):
        m.validate([1, 1, 1, 1, 1])
    with pytest.raises(GenomeError, match="0 or 1"):
        m.validate([1, 2, 1, 1])
    with pytest.raises(GenomeError, match="not one of"):
        Choice("k", options=(3, 5)).validate(4)
    with pytest.raises(GenomeError, match="outside"):
        Scale("d", low=0.5, high=1.0).validate(1.5)
    with pytest.raises(GenomeError, match="grid"):
        Scale("d", low=0.5, high=1.0, step=0.25).validate(0.6)
    with pytest.raises(GenomeError, match="unknown weight set"):
        WeightSet("w", options=("float", "int3"))


def test_mask_repair_keeps_min_keep():
    m = Mask("m", length=8, min_keep=5)
    rng = random.Random(0)
    for _ in range(100):
        assert sum(m.mutate(m.sample(rng), rng, 0.9)) >= 5
