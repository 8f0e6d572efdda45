"""Check fastvc's model against oracle fixtures and key manifests.

    python -m fastvc.model.check ../shared/oracle/*.pt ../shared/oracle/keys-full.json

Prints one JSON line per file, `{"file", "component", "ok", "max_abs", "rel_l2"}` (the worst output), and
exits 0 only if every file passes. The tolerance rule (oracle README, section 2): for every output tensor the
shape matches and both `max|ours − ref| ≤ max_abs` and `‖ours − ref‖₂/‖ref‖₂ ≤ rel_l2` hold.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RUNNERS: dict[str, str] = {
    "mel": "fastvc.model.oracle_runners.frontend:run_mel",
    "fbank": "fastvc.model.oracle_runners.frontend:run_fbank",
    "campplus": "fastvc.model.oracle_runners.encoders:run_campplus",
    "wav2vec2": "fastvc.model.oracle_runners.encoders:run_wav2vec2",
    "length_regulator": "fastvc.model.oracle_runners.dit:run_length_regulator",
    "dit": "fastvc.model.oracle_runners.dit:run_dit",
    "cfm": "fastvc.model.oracle_runners.dit:run_cfm",
    "hift_f0": "fastvc.model.oracle_runners.hift:run_hift_f0",
    "hift_source": "fastvc.model.oracle_runners.hift:run_hift_source",
    "hift_decode": "fastvc.model.oracle_runners.hift:run_hift_decode",
    "stream": "fastvc.model.oracle_runners.stream:run_stream",
}

# `section.list` in keys-full.json -> builder; the builder gets the enclosing section dict (with its `config`).
KEY_BUILDERS: dict[str, str] = {
    "seed_vc_dit_checkpoint.cfm": "fastvc.model.oracle_runners.dit:keys_cfm",
    "seed_vc_dit_checkpoint.length_regulator": "fastvc.model.oracle_runners.dit:keys_length_regulator",
    "campplus.keys": "fastvc.model.oracle_runners.encoders:keys_campplus",
    "hift.keys": "fastvc.model.oracle_runners.hift:keys_hift",
    "wav2vec2.keys": "fastvc.model.oracle_runners.encoders:keys_wav2vec2",
}


@dataclass
class Comparison:
    """The worst agreement over a file's outputs; `problems` says what failed, empty when ok."""

    max_abs: float = 0.0
    rel_l2: float = 0.0
    problems: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def resolve(dotted: str) -> Callable[..., Any]:
    module_name, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def compare_outputs(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], tol: dict[str, float]) -> Comparison:
    """Apply the tolerance rule to every tensor of `ref`; a missing output or a shape mismatch fails."""
    result = Comparison(problems=[])
    for name, expected in ref.items():
        if name not in ours:
            result.problems.append(f"{name}: not computed")
            continue
        got = torch.as_tensor(ours[name]).detach().to("cpu")
        if tuple(got.shape) != tuple(expected.shape):
            result.problems.append(f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}")
            continue
        diff = got.double() - expected.double()
        max_abs = float(diff.abs().max()) if diff.numel() else 0.0
        ref_norm = float(expected.double().norm())
        rel = float(diff.norm()) / ref_norm if ref_norm > 0 else (0.0 if max_abs == 0 else math.inf)
        result.max_abs, result.rel_l2 = max(result.max_abs, max_abs), max(result.rel_l2, rel)
        if not (max_abs <= tol["max_abs"] and rel <= tol["rel_l2"]):
            result.problems.append(f"{name}: max_abs {max_abs:.3g}, rel_l2 {rel:.3g}")
    return result


def check_fixture(path: Path) -> dict[str, Any]:
    fixture = torch.load(path, map_location="cpu", weights_only=True)
    component = fixture.get("component")
    if component not in RUNNERS:
        return {"file": str(path), "component": component, "ok": False, "error": "not a fixture"}
    with torch.inference_mode():
        ours = resolve(RUNNERS[component])(fixture, path.parent)
    comparison = compare_outputs(ours, fixture["outputs"], fixture["tolerance"])
    line = {"file": str(path), "component": component, "ok": comparison.ok,
            "max_abs": comparison.max_abs, "rel_l2": comparison.rel_l2}
    if comparison.problems:
        line["problems"] = comparison.problems
    return line


def manifest_section(manifest: dict[str, Any], dotted: str) -> tuple[dict[str, Any], list | None]:
    """Split `"seed_vc_dit_checkpoint.cfm"` into the enclosing section dict (it carries `config`, `source`,
    `non_float32`) and its `[key, shape]` list; the list is None when the manifest lacks it."""
    section_name, _, list_name = dotted.rpartition(".")
    section = manifest.get(section_name)
    if not isinstance(section, dict):
        return {}, None
    return section, section.get(list_name)


def check_manifest(path: Path) -> dict[str, Any]:
    """Every section's `[key, shape]` list must equal what fastvc's modules expect, key for key."""
    manifest = json.loads(path.read_text())
    problems: list[str] = []
    for section_name, builder in KEY_BUILDERS.items():
        section, key_list = manifest_section(manifest, section_name)
        if key_list is None:
            problems.append(f"{section_name}: missing from manifest")
            continue
        expected = {key: list(shape) for key, shape in key_list}
        ours = {key: list(shape) for key, shape in resolve(builder)(section).items()}
        missing, unexpected = sorted(expected.keys() - ours.keys()), sorted(ours.keys() - expected.keys())
        wrong = sorted(k for k in expected.keys() & ours.keys() if expected[k] != ours[k])
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if keys:
                problems.append(f"{section_name}: {label} {keys[:5]}{' …' if len(keys) > 5 else ''} ({len(keys)})")
    line = {"file": str(path), "component": "keys", "ok": not problems, "max_abs": 0.0, "rel_l2": 0.0}
    if problems:
        line["problems"] = problems
    return line


def check_file(path: Path) -> dict[str, Any]:
    try:
        return check_manifest(path) if path.suffix == ".json" else check_fixture(path)
    except Exception as error:  # noqa: BLE001 - one broken file must not hide the others' results
        return {"file": str(path), "component": None, "ok": False, "error": f"{type(error).__name__}: {error}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastvc.model.check", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="fixture .pt files and key manifest .json files")
    args = parser.parse_args(argv)
    all_ok = True
    for path in args.paths:
        if path.suffix == ".pt" and path.stem == "campplus_cn_common":
            continue  # the real CAMPPlus weights that fixtures point to, not a fixture
        line = check_file(path)
        all_ok &= bool(line["ok"])
        print(json.dumps(line), flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
