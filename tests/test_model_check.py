"""The acceptance command of issue 4: `python -m fastvc.model.check` over every file in ../shared/oracle.

One run of the CLI's `main` over all fixtures and the key manifest (~20 s on one core): every component,
the whole real-time `stream` path and the full-size key lists must pass at the fixtures' tolerances.
"""

from __future__ import annotations

import json

from fastvc.model.check import main


def test_every_oracle_file_passes_the_checker(oracle_dir, capsys):
    paths = sorted(oracle_dir.glob("*.pt")) + sorted(oracle_dir.glob("*.json"))
    exit_code = main([str(p) for p in paths])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    failed = [line for line in lines if not line["ok"]]
    assert failed == [] and exit_code == 0
    checked = {line["component"] for line in lines}
    assert {"stream", "keys", "mel", "fbank", "campplus", "wav2vec2", "length_regulator", "dit", "cfm",
            "hift_f0", "hift_source", "hift_decode"} <= checked
    assert len(lines) == len(paths) - 1  # all but the CAMPPlus weights file, which is not a fixture
