#!/usr/bin/env python3
"""Time the real-time Seed-VC model per block, component by component, at several batch sizes.

    python bench/model_bench.py                                   CPU, synthetic `tiny` preset, batch 1,4,16,64
    python bench/model_bench.py --preset small --threads 1 --json out.json
    python bench/model_bench.py --device cuda --preset real --dtype float16 --streams-search

One "block" is what the server computes for each session every `block_time_s` (default 180 ms): XLS-R over the
2.76 s 16 kHz window, the length regulator, the CFG Euler sampler over prompt + block (`--steps`, `--cfg`), the
vocoder (f0, source, the decoded tail) — `SeedVCModel.convert`, split into its parts (each timed over the whole
batch; `total` is `convert` itself, in `--micro-batch` slices as the engine runs it). Weights are random (the
synthetic engine's presets); compute does not depend on their values. Times are medians over `--repeat` runs
after one warm-up run, in ms per batch and per stream.

"Real-time streams" is the largest batch whose whole block fits in one block period; `--streams-search`
finds it by doubling then bisection (on CUDA: real size, fp16/bf16, the figure for one GPU), and compares it
with batch 1, where one forward serves one stream.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

import torch  # noqa: E402

from fastvc.model.host import keep_freed_memory  # noqa: E402
from fastvc.model.presets import PRESETS, random_model  # noqa: E402
from fastvc.model.seedvc import SeedVCModel, VoicePrompt  # noqa: E402
from fastvc.model.voices import VoiceLibrary  # noqa: E402
from fastvc.stream import StreamGeometry, StreamSettings  # noqa: E402

COMPONENTS = ("xlsr", "length_regulator", "sampler", "vocoder", "total")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--preset", choices=PRESETS, help="model size (default: tiny on CPU, real on CUDA)")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU, float16 on CUDA) | float32 | "
                                                        "float16 | bfloat16")
    parser.add_argument("--batches", default="1,4,16,64", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=10, help="diffusion steps")
    parser.add_argument("--cfg", type=float, default=0.7, help="CFG rate (0: no guidance, half the DiT work)")
    parser.add_argument("--block-ms", type=float, default=180.0, help="block length (the real-time budget)")
    parser.add_argument("--prompt-seconds", type=float, default=3.0,
                        help="target-voice prompt length ([stream] max_prompt_seconds); the DiT runs it every step")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per batch size (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--micro-batch", type=int, default=-1,
                        help="run the whole block in slices of this many streams (default: 8 on CPU as the "
                             "engine does, whole batch on CUDA; 0: whole batch)")
    parser.add_argument("--streams-search", action="store_true", help="find the most real-time streams")
    parser.add_argument("--max-streams", type=int, default=1024, help="upper bound of --streams-search")
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args(argv)


class Bench:
    """A model, one voice and the stream geometry; times the parts of `convert` for a batch size."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.precision = args.dtype if args.dtype != "auto" else ("float16" if self.device.type == "cuda"
                                                                  else "float32")
        self.preset = args.preset or ("real" if self.device.type == "cuda" else "tiny")
        self.model: SeedVCModel = random_model(self.preset, seed=0, precision=self.precision, device=self.device)
        self.geometry = StreamGeometry.from_settings(StreamSettings(block_time_s=args.block_ms / 1000.0),
                                                     self.model.sample_rate_hz, self.model.hop_length)
        library = VoiceLibrary(None, self.model.sample_rate_hz)
        reference = torch.from_numpy(library.reference(library.default_voice))
        self.voice: VoicePrompt = self.model.prepare_voice(reference, args.prompt_seconds)
        self.steps, self.cfg, self.repeat = args.steps, args.cfg, args.repeat
        self.micro_batch = args.micro_batch if args.micro_batch >= 0 else (8 if self.device.type == "cpu" else 0)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], object]) -> tuple[object, float]:
        self.sync()
        started = time.perf_counter()
        result = fn()
        self.sync()
        return result, (time.perf_counter() - started) * 1000.0

    @torch.inference_mode()
    def block_ms(self, batch: int) -> dict[str, float]:
        """Median ms per batch of each component, and of the whole block, at `batch` streams."""
        model, g = self.model, self.geometry
        generator = torch.Generator(device=self.device).manual_seed(batch)
        windows = 0.1 * torch.randn(batch, g.window_16k, generator=generator, device=self.device)
        noise = [model.draw_noise(g.target_frames, generator) for _ in range(batch)]
        voices = [self.voice] * batch
        ylens = torch.full((batch,), g.target_frames, dtype=torch.int64, device=self.device)
        runs: dict[str, list[float]] = {name: [] for name in COMPONENTS}
        for run in range(self.repeat + 1):
            with model._autocast():
                features, xlsr_ms = self.timed(lambda: model.wav2vec2(windows))
            content = features[:, g.dropped_frames:].float()
            cond, lr_ms = self.timed(lambda: model.length_regulator(content, ylens))
            mel, sampler_ms = self.timed(lambda: model.sample_mel(cond, voices, [n.z for n in noise], self.steps,
                                                                  self.cfg))
            _, vocoder_ms = self.timed(lambda: model.vocode_slice(mel, noise, g))
            _, total_ms = self.timed(lambda: model.convert(windows, voices, noise, g, self.steps, self.cfg,
                                                           micro_batch=self.micro_batch))
            if run > 0:  # the first run warms up (allocations, kernel choice)
                for name, ms in zip(COMPONENTS, (xlsr_ms, lr_ms, sampler_ms, vocoder_ms, total_ms)):
                    runs[name].append(ms)
        return {name: statistics.median(values) for name, values in runs.items()}

    @torch.inference_mode()
    def total_ms(self, batch: int) -> float:
        """Median ms of one whole block (`convert`) at `batch` streams."""
        return self.block_ms(batch)["total"]


def streams_search(bench: Bench, budget_ms: float, limit: int) -> tuple[int, dict[int, float]]:
    """The most streams whose batched block takes at most `budget_ms`: doubling, then bisection."""
    seen: dict[int, float] = {}

    def fits(n: int) -> bool:
        if n not in seen:
            seen[n] = bench.total_ms(n)
            print(f"  search: batch {n}: {seen[n]:.1f} ms", flush=True)
        return seen[n] <= budget_ms

    if not fits(1):
        return 0, seen
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, seen


def format_table(rows: dict[int, dict[str, float]]) -> str:
    header = f"{'batch':>6} " + " ".join(f"{name + ' ms':>20}" for name in COMPONENTS) + f" {'ms/stream':>10}"
    lines = [header]
    for batch, ms in rows.items():
        cells = " ".join(f"{ms[name]:>20.1f}" for name in COMPONENTS)
        lines.append(f"{batch:>6} {cells} {ms['total'] / batch:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        keep_freed_memory()  # as the engine does on a CPU
    bench = Bench(args)
    params_m = sum(p.numel() for p in bench.model.parameters()) / 1e6
    print(f"device {bench.device} ({torch.cuda.get_device_name(bench.device) if bench.device.type == 'cuda' else 'cpu'}"
          f", {torch.get_num_threads()} threads), preset {bench.preset} ({params_m:.1f} M parameters), "
          f"{bench.precision}, {args.steps} steps, CFG {args.cfg}, block {args.block_ms:.0f} ms, prompt "
          f"{bench.voice.prompt_frames} frames + {bench.geometry.target_frames} generated; total in slices of "
          f"{bench.micro_batch or 'the whole batch'}", flush=True)
    rows = {batch: bench.block_ms(batch) for batch in (int(b) for b in args.batches.split(","))}
    print(format_table(rows))
    report = {"device": str(bench.device), "preset": bench.preset, "prompt_frames": bench.voice.prompt_frames, "precision": bench.precision,
              "threads": torch.get_num_threads(), "micro_batch": bench.micro_batch, "steps": args.steps, "cfg": args.cfg, "block_ms": args.block_ms,
              "ms_per_batch": {str(b): ms for b, ms in rows.items()}}
    if args.streams_search:
        streams, seen = streams_search(bench, args.block_ms, args.max_streams)
        batch1_streams = int(args.block_ms // seen[1]) if seen[1] > 0 else 0
        print(f"real-time streams at {args.block_ms:.0f} ms blocks: {streams} batched; {batch1_streams} at batch 1 "
              f"(one forward per stream, {seen[1]:.1f} ms each)")
        report.update(streams_batched=streams, streams_batch1=batch1_streams,
                      search_ms={str(n): ms for n, ms in sorted(seen.items())})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
