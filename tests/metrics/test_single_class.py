"""`split_single_class`: the one defined rate of a subset with one class."""

from __future__ import annotations


def test_split_single_class_rates():
    from dgsnet.single_class import split_single_class

    two, single = split_single_class(
        {
            "mix": ([0, 1], [0.1, 0.9]),
            "real": ([0, 0, 0, 0], [0.1, 0.6, 0.5, 0.4]),
            "fake": ([1, 1], [0.7, 0.2]),
        },
        threshold=0.5,
    )
    assert list(two) == ["mix"]
    assert single["real"].metric == "r_acc" and single["real"].value == 0.75  # 0.5 is real
    assert single["fake"].metric == "f_acc" and single["fake"].value == 0.5
