"""The Seed-VC engines: `seedvc` (the official weights) and `synthetic` (the same model with random weights).

    SeedVCEngine(settings, config=Config)      weights from [model] (hub cache or local paths), voices from [voices]
    SyntheticEngine(settings, config=Config)   preset [engine] preset (tiny | small | real), seeded random weights

Both run `fastvc.model.seedvc.SeedVCModel` on the worker thread: `warmup` builds and loads the model and
precomputes every voice (R1–R5, shared by all sessions of that voice); `run_batch` converts one block of many
sessions in one pass. Requests with different diffusion steps or CFG rates in one call run as separate passes.
Each block's random draws come from a generator seeded by `BlockRequest.seed` (or are given in
`BlockRequest.noise`), so a session's output does not depend on which blocks it was batched with.

Construction is cheap and never touches the network: it resolves the weight files and reads the model config
(`EngineLoadError` names what is missing and `fastvc download`). Options: `config` (the whole Config), and
`device`, `dtype`, `preset`, `threads`, `seed` overriding the [engine] section. On the CPU, `threads` 0 means
all cores but one: with every core busy, torch's intra-op threads stall each other (measured on 2 cores: one
thread converts a block in 26 ms, two threads took up to 230 ms while the server used the other core).
"""

from __future__ import annotations

import os
import time
from abc import abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog
import torch

from fastvc.config import Config
from fastvc.engine.base import BlockRequest, BlockResult, Engine, EngineError, EngineLoadError
from fastvc.model import host, presets, weights
from fastvc.model.seedvc import BlockNoise, SeedVCModel, VoicePrompt
from fastvc.model.voices import VoiceError, VoiceLibrary

log = structlog.get_logger("fastvc.engine.seedvc")

DTYPES = {"float32", "float16", "bfloat16"}
CPU_MICRO_BATCH = 8
"""On a CPU a batch runs in slices of this many streams (`SeedVCModel.convert(micro_batch=)`): measured ~25 %
faster than one 16-stream pass on the tiny preset (activations stay in cache). GPUs take the whole batch."""


def resolve_device(name: str) -> torch.device:
    """`auto`: the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineLoadError(f"[engine] device {name!r}: CUDA is not available")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: float16 on CUDA (as upstream runs), float32 on the CPU. Low precision needs CUDA."""
    if name == "auto":
        return "float16" if device.type == "cuda" else "float32"
    if name not in DTYPES:
        raise EngineLoadError(f"[engine] dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    if name != "float32" and device.type != "cuda":
        raise EngineLoadError(f"[engine] dtype {name} needs a CUDA device; the CPU runs float32")
    return name


class SeedVCFamilyEngine(Engine):
    """What both Seed-VC engines share: model lifecycle, voices, noise, batching. Subclasses build the model."""

    def __init__(self, settings, *, config: Config | None = None, mel_config: dict[str, Any],
                 **options: Any) -> None:
        self.config = config or Config()
        engine_config = self.config.engine
        self.options = {"device": engine_config.device, "dtype": engine_config.dtype,
                        "threads": engine_config.threads} | options
        self.model_rate_hz, self.hop_length = int(mel_config["sr"]), int(mel_config["hop_length"])
        super().__init__(settings)
        self.device = resolve_device(str(self.options["device"]))
        self.precision = resolve_precision(str(self.options["dtype"]), self.device)
        voices = self.config.voices
        try:
            self.library = VoiceLibrary(voices.directory or None, self.model_rate_hz,
                                        self.config.stream.max_prompt_seconds, voices.default_voice)
        except VoiceError as error:
            raise EngineLoadError(f"[voices]: {error}") from error
        self.model: SeedVCModel | None = None
        self._voices: dict[str, VoicePrompt] = {}
        self._prompt_frames: dict[str, int] = {}

    # -- lifecycle (worker thread) ----------------------------------------------------------------------------

    @abstractmethod
    def build_model(self) -> SeedVCModel:
        """The model with its weights, on the CPU (called once, on the worker thread)."""

    def warmup(self) -> None:
        """Build the model, precompute every voice, run one block so the first real one is not slow."""
        self._ensure_model()
        for voice_id in self.library.ids():
            self.voice_prompt(voice_id)
        window = np.zeros(self.geometry.window_16k, np.float32)
        recent = np.zeros(self.geometry.return_samples + self.geometry.extra_right, np.float32)
        stream = self.config.stream
        self.run_batch([BlockRequest("warmup", 0, window, recent, diffusion_steps=stream.diffusion_steps,
                                     cfg_rate=stream.inference_cfg_rate)])

    def _ensure_model(self) -> SeedVCModel:
        if self.model is None:
            threads = int(self.options["threads"])
            if threads <= 0 and self.device.type == "cpu":
                threads = max(1, (os.cpu_count() or 1) - 1)  # one core stays with the event loop and codecs
            if threads > 0:
                torch.set_num_threads(threads)
            if self.device.type == "cpu":
                host.keep_freed_memory()  # without it a block's activations were page faults again every forward
            started = time.perf_counter()
            self.model = self.build_model().to(self.device)
            log.info("engine.model_loaded", engine=self.name, device=str(self.device), precision=self.precision,
                     load_s=round(time.perf_counter() - started, 2), threads=torch.get_num_threads())
        return self.model

    def voices(self) -> list[str]:
        return self.library.ids()

    def prompt_frames(self, voice_id: str) -> int:
        """P of the voice (mel frames of its cut reference), for prompt-length buckets; cached, no model needed."""
        try:
            voice_id = self.library.resolve(voice_id)
        except VoiceError:
            return 0
        if voice_id not in self._prompt_frames:
            self._prompt_frames[voice_id] = self.library.reference(voice_id).shape[0] // self.hop_length
        return self._prompt_frames[voice_id]

    def voice_prompt(self, voice_id: str) -> VoicePrompt:
        """The precomputed prompt of a voice ("default" and "" mean the default voice), computed on first use."""
        try:
            voice_id = self.library.resolve(voice_id)
        except VoiceError as error:
            raise EngineError(str(error)) from error
        if voice_id not in self._voices:
            started = time.perf_counter()
            reference = torch.from_numpy(self.library.reference(voice_id))
            self._voices[voice_id] = self._ensure_model().prepare_voice(reference, self.config.stream.max_prompt_seconds)
            log.info("engine.voice_ready", voice=voice_id, prompt_frames=self._voices[voice_id].prompt_frames,
                     ms=round((time.perf_counter() - started) * 1000, 1))
        return self._voices[voice_id]

    # -- blocks (worker thread) -------------------------------------------------------------------------------

    def run_batch(self, requests: Sequence[BlockRequest]) -> list[BlockResult]:
        model = self._ensure_model()
        results: dict[int, BlockResult] = {}
        groups: dict[tuple[int, float], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[(request.diffusion_steps, float(request.cfg_rate))].append(index)
        with torch.inference_mode():
            for (steps, cfg_rate), indices in groups.items():
                group = [requests[i] for i in indices]
                audio = self._convert(model, group, steps, cfg_rate)
                for i, request, samples in zip(indices, group, audio):
                    results[i] = BlockResult(request.session_id, request.block_index, samples)
        return [results[i] for i in range(len(requests))]

    def _convert(self, model: SeedVCModel, requests: list[BlockRequest], steps: int, cfg_rate: float) -> np.ndarray:
        """One pass for requests sharing steps and CFG rate -> (B, return_samples) float32."""
        if steps < 1:
            raise EngineError(f"diffusion_steps must be at least 1, got {steps}")
        voices = [self.voice_prompt(r.voice_id) for r in requests]
        noise = [self.block_noise(model, r) for r in requests]
        windows = torch.from_numpy(np.stack([r.window_16k for r in requests]))
        micro_batch = CPU_MICRO_BATCH if self.device.type == "cpu" else 0
        outputs = model.convert(windows, voices, noise, self.geometry, steps, cfg_rate, micro_batch=micro_batch)
        return outputs.wav_slice.cpu().numpy().astype(np.float32, copy=False)

    def block_noise(self, model: SeedVCModel, request: BlockRequest) -> BlockNoise:
        """The request's own draws: `request.noise` ({"z", "hift_phase", "hift_noise"}) or from its seed."""
        if request.noise is not None:
            return BlockNoise(**{key: torch.as_tensor(request.noise[key], device=self.device)
                                 for key in ("z", "hift_phase", "hift_noise")})
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(request.seed) & 0xFFFF_FFFF_FFFF_FFFF)
        return model.draw_noise(self.geometry.target_frames, generator)

    def close(self) -> None:
        self.model = None
        self._voices.clear()


class SeedVCEngine(SeedVCFamilyEngine):
    """The real model, from the official checkpoints (see `fastvc.model.weights`)."""

    name = "seedvc"

    def __init__(self, settings, *, config: Config | None = None, **options: Any) -> None:
        config = config or Config()
        try:
            self.files = weights.resolve_weight_files(config.model, download=False)
            _, mel = weights.read_dit_yaml(self.files.dit_config)
        except weights.WeightsError as error:
            raise EngineLoadError(str(error)) from error
        super().__init__(settings, config=config, mel_config=mel, **options)

    def build_model(self) -> SeedVCModel:
        try:
            checkpoint = weights.read_checkpoint(self.files)
            model = SeedVCModel(checkpoint.configs, precision=self.precision)
            dropped = model.load_checkpoint(checkpoint.state_dicts)
        except weights.WeightsError as error:
            raise EngineLoadError(str(error)) from error
        log.info("engine.weights_loaded", unused_keys={k: len(v) for k, v in dropped.items()},
                 dit=str(self.files.dit_checkpoint))
        return model


class SyntheticEngine(SeedVCFamilyEngine):
    """The same model with seeded random weights at a size preset: runs without any download."""

    name = "synthetic"

    def __init__(self, settings, *, config: Config | None = None, preset: str | None = None,
                 seed: int | None = None, **options: Any) -> None:
        config = config or Config()
        self.preset = preset or config.engine.preset
        self.seed = config.engine.seed if seed is None else int(seed)
        try:
            configs = presets.preset_configs(self.preset)
        except ValueError as error:
            raise EngineLoadError(f"[engine] preset: {error}") from error
        super().__init__(settings, config=config, mel_config=configs["mel"], **options)

    def build_model(self) -> SeedVCModel:
        return presets.random_model(self.preset, self.seed, precision=self.precision)
