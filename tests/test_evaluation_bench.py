"""benchmarks/bench_eval.py runs end to end in its tiny mode and all implementations agree."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_eval_smoke(project_root):
    proc = subprocess.run([sys.executable, str(project_root / "benchmarks" / "bench_eval.py"), "--smoke", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    methods = {r["method"] for r in report["results"]}
    assert methods == {"chunked", "chunked_features", "full_sort", "irra_style"}
    assert report["smoke_max_metric_diff_vs_full_sort"] < 1e-3
    assert report["smoke_max_metric_diff_vs_irra_style"] < 1e-3
    for row in report["results"]:
        assert row["seconds"] > 0 and row["extra_peak_MB"] >= 0
