import math

import numpy as np
import pytest
import torch

from course_lib.core.tables import fmt, table_str


@pytest.mark.parametrize(
    "value, text",
    [
        (3.14159265, "3.142"),
        (123456.7, "1.235e+05"),
        (0.000123456, "0.0001235"),
        (-0.0, "0"),
        (-1e-300 * 1e-300, "0"),
        (42, "42"),
        (True, "True"),
        (None, "-"),
        (math.nan, "nan"),
        (-math.inf, "-inf"),
        (np.float32(2.5), "2.5"),
        (torch.tensor(1.0 / 3.0), "0.3333"),
        ("text", "text"),
    ],
)
def test_fmt(value, text):
    assert fmt(value) == text


def test_fmt_hides_float_noise():
    # The same number computed in two orders prints the same.
    a = 0.1 + 0.2
    b = 0.3
    assert a != b and fmt(a) == fmt(b)


def test_table_aligns_and_rounds():
    text = table_str([{"name": "fp16", "ppl": 12.34567}, {"name": "int4", "ppl": 13.0}], title="t")
    lines = text.splitlines()
    assert lines[0] == "t"
    assert lines[1].split() == ["name", "ppl"]
    assert lines[3].split() == ["fp16", "12.35"]
    assert len({len(line) for line in lines[1:3]}) == 1  # header and rule have the same width


def test_table_from_sequences_checks_width():
    assert "b" in table_str([[1, 2]], ["a", "b"])
    with pytest.raises(ValueError, match="headers"):
        table_str([[1, 2]])
    with pytest.raises(ValueError, match="2 cells"):
        table_str([[1, 2]], ["a"])
