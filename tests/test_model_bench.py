"""bench/model_bench.py runs (CPU, tiny preset, one step) and reports every component and the stream search."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO_ROOT
from voicekit import restore_torch_threads

keep_torch_threads = pytest.fixture(autouse=True)(restore_torch_threads)


def test_model_bench_reports_components_and_real_time_streams(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("model_bench", REPO_ROOT / "bench" / "model_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--batches", "1,2", "--repeat", "1", "--steps", "1", "--threads", "1", "--streams-search",
                       "--max-streams", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["ms_per_batch"]) == {"1", "2"}
    assert set(report["ms_per_batch"]["2"]) == {"xlsr", "length_regulator", "sampler", "vocoder", "total"}
    assert 0 <= report["streams_batched"] <= 2 and "real-time streams" in capsys.readouterr().out
