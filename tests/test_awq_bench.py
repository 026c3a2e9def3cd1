"""course_lib.awq.bench: the GPTQ-against-AWQ verdict over calibration seeds (the recording's summary)."""

from __future__ import annotations

import pytest

from course_lib.awq.bench import ranking


def _rows(gptq, awq, bits=4, rtn=50.0):
    rows = [{"seed": None, "bits": bits, "method": "RTN", "ppl_8192": rtn}]
    for seed, (g, a) in enumerate(zip(gptq, awq)):
        rows += [{"seed": seed, "bits": bits, "method": "GPTQ", "ppl_8192": g},
                 {"seed": seed, "bits": bits, "method": "AWQ", "ppl_8192": a}]
    return rows


def test_a_gap_larger_than_the_spread_with_one_sign_names_a_winner():
    (r,) = ranking(_rows([44.0, 44.1, 44.05], [45.0, 45.2, 45.1]))
    assert r["verdict"] == "GPTQ lower" and r["seeds"] == 3 and r["RTN"] == 50.0
    assert r["GPTQ spread"] == pytest.approx(0.1) and r["AWQ spread"] == pytest.approx(0.2)
    assert r["AWQ - GPTQ mean"] == pytest.approx(1.05) and r["AWQ worst"] == 45.2 and r["GPTQ worst"] == 44.1
    (r,) = ranking(_rows([45.0, 45.2, 45.1], [44.0, 44.1, 44.05]))
    assert r["verdict"] == "AWQ lower"


def test_a_gap_within_the_spread_or_changing_sign_is_a_tie():
    # mean gap 0.1 against a spread of 0.3: a tie, although every seed has GPTQ lower
    (r,) = ranking(_rows([44.0, 44.3, 44.1], [44.1, 44.4, 44.2]))
    assert r["verdict"] == "tie" and r["AWQ - GPTQ min"] == pytest.approx(0.1)
    # a large mean gap driven by one seed, with the sign changing: a tie
    (r,) = ranking(_rows([44.0, 44.0, 44.0], [44.0 - 0.01, 44.0, 47.0]))
    assert r["verdict"] == "tie"


def test_bit_widths_are_ranked_separately_and_unpaired_seeds_fail():
    rows = _rows([44.0, 44.1], [45.0, 45.1], bits=4) + _rows([46.0, 46.1], [46.05, 46.0], bits=3)
    r4, r3 = ranking(rows)
    assert (r4["bits"], r4["verdict"]) == (4, "GPTQ lower") and (r3["bits"], r3["verdict"]) == (3, "tie")
    with pytest.raises(ValueError, match="both a GPTQ and an AWQ"):
        ranking([{"seed": 0, "bits": 4, "method": "GPTQ", "ppl_8192": 44.0}])


def test_each_evaluation_set_gets_its_own_verdict():
    rows = _rows([44.0, 44.1, 44.05], [45.0, 45.2, 45.1])
    for r, other in zip(rows, [50.0, 44.0, 44.5, 44.1, 44.0, 44.05, 44.3]):  # a second set where AWQ and GPTQ swap
        r["ppl_16384"] = other
    (first,) = ranking(rows)  # the default: the first evaluation set
    (second,) = ranking(rows, "ppl_16384")
    assert first["verdict"] == "GPTQ lower" and second["verdict"] == "tie"
    with pytest.raises(KeyError):
        ranking(rows, "ppl_4096")


def test_seed_rows_rejects_bad_arguments_before_loading_anything():
    from course_lib.awq.bench import seed_rows

    with pytest.raises(ValueError, match="distinct"):
        seed_rows(seeds=(0, 0))
    with pytest.raises(ValueError, match="at least one window"):
        seed_rows(eval_tokens=(100,))
