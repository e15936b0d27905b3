"""The sentences notebooks 31 and 40 print under their results state the measured direction and size."""
from __future__ import annotations

import pandas as pd
import pytest

from irra_core.evaluation.audit import LeakAuditReport, alone_verdict, audit_summary, gap_verdict, order_verdict
from irra_core.viz.attention import pointing_verdict


def test_order_verdict_states_direction_and_size():
    assert "identical in both orders" in order_verdict("php", 23.44, 23.44, 512)
    above = order_verdict("php-batch-efp", 32.18, 31.53, 512)
    assert "0.65 pp above" in above and "inflated" in above and "batch size 512" in above
    below = order_verdict("x", 30.0, 31.5, 64)
    assert "1.50 pp *below*" in below and "inflated" not in below


def test_order_verdict_with_a_paired_interval_says_whether_it_is_noise():
    clear = order_verdict("b", 38.12, 34.13, 64, interval=(1.2, 6.8), p_value=0.004)
    assert "3.99 pp above" in clear and "[+1.20, +6.80]" in clear and "p = 0.004" in clear
    assert "changes the test result" in clear and "noise" not in clear
    noisy = order_verdict("b", 38.12, 34.13, 64, interval=(-0.47, 8.24), p_value=0.089)
    assert "3.99 pp above" in noisy and "within the noise" in noisy and "changes" not in noisy
    lower = order_verdict("b", 27.43, 30.09, 64, interval=(-4.6, -0.8), p_value=0.007, metric="mAP")
    assert "t2i mAP 27.43" in lower and "2.66 pp *below*" in lower and "changes the test result" in lower
    assert "identical in both orders" in order_verdict("p", 29.7, 29.7, 64, interval=(0.0, 0.0), p_value=1.0)
    assert "p = 0.001" in order_verdict("b", 36.81, 29.06, 64, interval=(3.7, 11.6), p_value=1 / 1001)


def test_gap_verdict_splits_the_gap_into_order_and_model():
    def r1(value):
        return {"t2i": {"R1": value}}

    orders = {("php", "identity-ordered"): r1(29.70), ("php", "shuffled"): r1(29.70),
              ("php-batch-efp", "identity-ordered"): r1(38.12), ("php-batch-efp", "shuffled"): r1(34.23)}
    text = gap_verdict(orders, 64)
    assert "+8.42 pp" in text and "the order accounts for +3.89 pp" in text and "still scores +4.53 pp" in text
    assert "difference between the trained models" in text
    orders[("php-batch-efp", "shuffled")] = r1(29.70)
    only_order = gap_verdict(orders, 64)
    assert "+8.42 pp of it" in only_order and "still scores +0.00 pp" in only_order
    assert "trained models" not in only_order
    assert "one query at a time" not in only_order  # no batch-size-1 rows: no clause about them
    orders[("php", "alone")], orders[("php-batch-efp", "alone")] = r1(29.70), r1(25.10)
    with_alone = gap_verdict(orders, 64)
    assert "one query at a time (batch size 1, no batch-mates) php-batch-efp scores -4.60 pp against php" in with_alone


def test_alone_verdict_compares_the_reported_number_with_one_query_at_a_time():
    clear = alone_verdict("b", 48.23, 40.40, 64, interval=(4.1, 11.5), p_value=0.001)
    assert "48.23 with identity-ordered batches of 64" in clear and "40.40 alone" in clear
    assert "reports 7.83 pp more" in clear and "[+4.10, +11.50]" in clear and "not what a deployed search gets" in clear
    noisy = alone_verdict("b", 40.0, 41.5, 64, interval=(-4.0, 1.0), p_value=0.4, metric="mAP")
    assert "t2i mAP" in noisy and "1.50 pp less" in noisy and "within the noise" in noisy
    assert "identical" in alone_verdict("p", 43.8, 43.8, 64, interval=(0.0, 0.0), p_value=1.0)


def _report(rows):
    keys = [f"{t}_{k}" for t in ("t2i", "i2t") for k in ("R1", "R5", "R10", "mAP", "mINP")]
    runs = [{"batch_size": bs, "shuffled": sh, "max_embedding_diff": 0.0, **{k: r1 for k in keys}}
            for bs, sh, r1 in rows]
    return LeakAuditReport(runs=runs, metric_spread={}, max_embedding_diff=0.0, flagged=False, reasons=[],
                           tolerance=1e-4, metric_tolerance=0.01, num_queries=10, num_gallery=5)


def test_audit_summary_reads_the_smallest_batch_above_one():
    text = audit_summary("m", _report([(1, False, 30.0), (128, False, 35.42), (128, True, 38.33),
                                       (512, False, 1.0), (512, True, 2.0)]))
    assert "30.00 alone, 35.42 identity-ordered, 38.33 shuffled (batch size 128)" in text
    assert "2.91 pp below" in text
    level = audit_summary("m", _report([(1, False, 32.0), (64, False, 32.0), (64, True, 32.0)]))
    assert "level with" in level


def test_pointing_verdict_compares_with_uniform_and_names_the_best_part():
    table = pd.DataFrame({"part": ["upper", "lower", "all"], "words": [10, 10, 20],
                          "hit_rate": [20.0, 19.0, 10.4], "uniform_rate": [22.4, 10.4, 9.4],
                          "lift": [20.0 / 22.4, 19.0 / 10.4, 10.4 / 9.4]})
    text = pointing_verdict("php", table)
    assert "10.4% of the time, above uniform attention (9.4%, 1.11x)" in text and "best part: lower" in text
    table.loc[table.part == "all", "hit_rate"] = 9.0
    assert "not above uniform" in pointing_verdict("php", table)


def _curve():
    import pandas as pd

    return pd.DataFrame({"batch_size": [512, 32, 64], "gallery_ids_per_batch": [25.8, 2.4, 3.9],
                         "inflation_R1": [8.55, 16.95, 21.95], "inflation_R1_low": [4.70, 11.85, 16.30],
                         "inflation_R1_high": [12.65, 22.35, 27.25]})


def test_curve_verdict_names_the_fewest_and_most_identities_per_batch():
    from irra_core.evaluation.audit import curve_verdict

    text = curve_verdict("php-batch-efp", _curve(), per_sample_inflation=0.0)
    fewest = text.index("+16.95 pp [+11.85, +22.35] at 2.4 identities")
    assert fewest < text.index("+8.55 pp [+4.70, +12.65] at 25.8") and "(batch size 32)" in text and "(batch size 512)" in text
    assert "+21.95" not in text and text.endswith("the per-sample php differs by 0.00 pp (above)")
    assert "per-sample" not in curve_verdict("m", _curve())
    with pytest.raises(ValueError, match="no batch sizes"):
        curve_verdict("m", _curve().iloc[:0])


def test_leak_audit_record_keeps_each_arrangement_and_the_curve_where_there_is_one():
    from types import SimpleNamespace

    import pandas as pd

    from irra_core.evaluation.audit import leak_audit_record

    def audit(flagged):
        return SimpleNamespace(flagged=flagged, reasons=["r"] if flagged else [], max_embedding_diff=0.1 * flagged,
                               metric_spread={}, runs=[])

    paired = pd.DataFrame({"diff": [1.5]}, index=pd.Index(["R1"], name="metric"))
    with_alone = {"identity-ordered": {"t2i": {"R1": 60.0}}, "shuffled": {"t2i": {"R1": 58.5}}, "paired": paired,
                  "alone": {"t2i": {"R1": 57.0}}, "paired_alone": paired * 2}
    without = {k: with_alone[k] for k in ("identity-ordered", "shuffled", "paired")}
    record = leak_audit_record({"leaky": audit(True), "clean": audit(False)}, {"leaky": with_alone, "clean": without},
                               {"leaky": _curve()}, 64)
    assert record["leaky"]["flagged"] is True and record["clean"]["flagged"] is False
    assert record["leaky"]["alone"]["t2i"]["R1"] == 57.0
    assert record["leaky"]["ordered_minus_alone"] == [{"metric": "R1", "diff": 3.0}]
    assert record["leaky"]["ordered_minus_shuffled"] == [{"metric": "R1", "diff": 1.5}]
    assert "alone" not in record["clean"] and "ordered_minus_alone" not in record["clean"]
    assert len(record["leaky"]["inflation_curve"]) == 3 and record["clean"]["inflation_curve"] is None
    assert record["clean"]["test_batch_size"] == 64
    with pytest.raises(KeyError):
        leak_audit_record({"other": audit(False)}, {"leaky": with_alone}, {}, 64)
