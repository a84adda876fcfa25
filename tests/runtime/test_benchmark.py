"""`runtime/benchmark.py`: per-stage recording without per-frame allocation, the percentiles, and the report."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.benchmark import StageRecorder, StageStats, summarize


def test_recorder_keeps_at_most_its_capacity_and_clears() -> None:
    recorder = StageRecorder(("vision", "total"), capacity=3)
    for ms in (1.0, 2.0, 3.0, 4.0):
        recorder.record({"vision": ms, "total": 10 * ms, "ignored": 0.0})
    assert recorder.count == 3 and recorder.values("vision").tolist() == [1.0, 2.0, 3.0]
    recorder.clear()
    assert recorder.count == 0 and recorder.values("total").size == 0


def test_stage_stats_on_known_numbers() -> None:
    stats = StageStats.of(np.arange(1.0, 101.0))
    assert (stats.p50, stats.p90, stats.p99) == pytest.approx((50.5, 90.1, 99.01))
    assert stats.mean == pytest.approx(50.5) and stats.max == 100.0
    assert StageStats.of(np.zeros(0)) == StageStats(0.0, 0.0, 0.0, 0.0, 0.0)


def test_summary_fps_jitter_and_table() -> None:
    recorder = StageRecorder(("vision", "total"), capacity=10)
    for ms in (10.0, 12.0, 14.0, 16.0):
        recorder.record({"vision": ms / 2, "total": ms})
    report = summarize(recorder, warmup=2, wall_s=0.5, backend="onnxruntime-cpu (fp32)", source="synthetic")
    assert report.frames == 4 and report.fps == pytest.approx(8.0)
    assert report.jitter_ms == pytest.approx(np.std([10.0, 12.0, 14.0, 16.0]))
    data = report.to_dict()
    assert data["stages_ms"]["total"]["p50"] == pytest.approx(13.0) and data["warmup"] == 2  # type: ignore[index]
    table = report.table()
    assert "4 frames after 2 warm-up: 8.0 FPS" in table and "backend onnxruntime-cpu (fp32); source synthetic" in table
