"""Seed-VC's real-time model (seed-uvit-tat-xlsr-tiny), composed from fastvc.model's components and batched
across sessions (oracle README 3.9, steps R1–R5 and B4–B8).

    per voice, once:   reference (N,) at the model rate --prepare_voice--> VoicePrompt (shared by its sessions)
    per block, batched: windows_16k (B, W16) + VoicePrompts + BlockNoise --convert--> slices (B, return_samples)

`convert` runs, for B streams at once: XLS-R on each 16 kHz window (each normalised over its own window), drops
the first d frames, regulates them to `target` mel frames (equal lengths, so batching is exact), samples the mel
with the CFG Euler sampler over `[prompt_condition_b ; cond_b]` (each item with its own prompt length: padded
and masked), vocodes the generated frames and cuts the B8 slice. Every random draw of a block comes from that
stream's own `torch.Generator` (or is given), so an item's output does not depend on its batch-mates.

Precision: float32 on CPU (the oracle's reference precision). On CUDA `precision` may be float16 or bfloat16:
XLS-R, the DiT and the vocoder's networks then run under autocast; the length regulator, CAMPPlus and the
vocoder's source (a phase accumulator) stay in float32, as upstream does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from fastvc.model import host, weights
from fastvc.model.audio import LogMel, kaldi_fbank, sinc_resample
from fastvc.model.campplus import CAMPPlus
from fastvc.model.cfm import sample_generated
from fastvc.model.dit import DiT
from fastvc.model.hift import HiFTGenerator
from fastvc.model.length_regulator import LengthRegulator
from fastvc.model.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder
from fastvc.stream import CONTENT_RATE_HZ, StreamGeometry

ModelConfigs = Mapping[str, Mapping[str, Any]]
"""Per component the config its constructor takes, as in the oracle's `stream` fixture and
`weights.SeedVCCheckpoint.configs`: `mel`, `fbank`, `campplus`, `wav2vec2`, `length_regulator`, `dit`, `hift`."""

LOW_PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}
NATIVE_CONV_CHANNELS = 32  # vocoders narrower than this run their CPU convolutions without oneDNN ...
NATIVE_CONV_MAX_BATCH = 8  # ... for batches of up to this many streams


@dataclass
class VoicePrompt:
    """A target voice, precomputed once (R1–R5) and shared by every session that uses it.

    ref16: (N16,) the cut reference at 16 kHz; prompt_mel: (n_mels, P); style: (style_dim,);
    prompt_condition: (P, content_dim), the length-regulated XLS-R features of the reference.
    """

    ref16: torch.Tensor
    prompt_mel: torch.Tensor
    style: torch.Tensor
    prompt_condition: torch.Tensor

    @property
    def prompt_frames(self) -> int:
        return self.prompt_mel.shape[1]


@dataclass
class BlockNoise:
    """The random draws of one block of one stream.

    z: (n_mels, target) the sampler's starting noise for the generated frames; hift_phase: (H+1, 1) and
    hift_noise: (H+1, U·target) the vocoder source's initial phases and noise.
    """

    z: torch.Tensor
    hift_phase: torch.Tensor
    hift_noise: torch.Tensor


@dataclass
class BlockOutputs:
    """One batched block. wav_slice: (B, return_samples) the B8 slice for SOLA. With intermediates:
    content (B, T16 − d, hidden), cond (B, target, content_dim), mel (B, n_mels, target), f0 (B, target)."""

    wav_slice: torch.Tensor
    content: torch.Tensor | None = None
    cond: torch.Tensor | None = None
    mel: torch.Tensor | None = None
    f0: torch.Tensor | None = None


def after_prompt(prompt: torch.Tensor, prompt_lens: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Lay each item out as [prompt_b[:P_b] | tail_b | zeros]: one gather for the whole batch.

    prompt: (B, P_max, C) valid in [0, P_b); prompt_lens: (B,) int64; tail: (B, T, C) -> (B, P_max + T, C).
    """
    p_max, n_tail = prompt.shape[1], tail.shape[1]
    frame = torch.arange(p_max + n_tail, device=prompt.device)[None, :]
    source = torch.where(frame < prompt_lens[:, None], frame, p_max + frame - prompt_lens[:, None])
    source = source.clamp(max=p_max + n_tail)  # past the tail: the zero row
    pool = torch.cat([prompt, tail, prompt.new_zeros(prompt.shape[0], 1, prompt.shape[2])], dim=1)
    return torch.gather(pool, 1, source[:, :, None].expand(-1, -1, prompt.shape[2]))


class SeedVCModel(nn.Module):
    """Every component of the real-time model. Submodule names are the checkpoint groups: `wav2vec2`,
    `length_regulator`, `dit` (keys `estimator.…`), `campplus`, `hift`; `log_mel` holds no weights."""

    def __init__(self, configs: ModelConfigs, precision: str = "float32") -> None:
        super().__init__()
        mel = dict(configs["mel"])
        self.sample_rate_hz = int(mel["sr"])
        self.hop_length = int(mel["hop_length"])
        self.log_mel = LogMel(**mel)
        self.fbank_options = dict(configs["fbank"])
        self.campplus = CAMPPlus(**configs["campplus"])
        w2v = dict(configs["wav2vec2"])
        self.wav2vec2 = Wav2Vec2Encoder(Wav2Vec2Config.from_dict(w2v), num_layers=int(w2v["output_layer"]))
        self.output_layer = int(w2v["output_layer"])
        self.length_regulator = LengthRegulator(**configs["length_regulator"]["length_regulator"])
        self.dit = DiT.from_config(dict(configs["dit"]))
        self.hift = HiFTGenerator.from_config(configs["hift"]["hift"], configs["hift"]["f0_predictor"])
        if precision != "float32" and precision not in LOW_PRECISIONS:
            raise ValueError(f"precision must be float32, float16 or bfloat16, got {precision!r}")
        self.precision = precision
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.hift.stft_window.device

    def load_checkpoint(self, state_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, list[str]]:
        """Load every group strictly (`weights.load_strict`); returns the unused keys dropped per group.

        wav2vec2 layers past `output_layer` are cut first (the real-time model uses the first 12 of 24).
        Raises one WeightsError listing the missing, unexpected and misshapen keys of every group.
        """
        dropped: dict[str, list[str]] = {}
        problems: list[str] = []
        w2v, dropped["wav2vec2"] = weights.wav2vec2_state_dict(state_dicts["wav2vec2"], self.output_layer)
        for name in ("wav2vec2", "length_regulator", "dit", "campplus", "hift"):
            state = w2v if name == "wav2vec2" else state_dicts[name]
            try:
                dropped[name] = dropped.get(name, []) + weights.load_strict(getattr(self, name), state, component=name)
            except weights.WeightsError as error:
                problems.append(str(error))
        if problems:
            raise weights.WeightsError("\n".join(problems))
        return dropped

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Low-precision autocast for the big networks on CUDA; a no-op in float32 and on CPU."""
        if self.precision == "float32" or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=LOW_PRECISIONS[self.precision])

    def _vocoder_convs(self, batch: int) -> contextlib.AbstractContextManager:
        """On a CPU, a narrow vocoder's convolutions over a few streams run without oneDNN
        (`host.native_convolutions`). Tiny preset, one thread: 2.5 vs 3.8 ms at 2 streams, 3.2 vs 4.7 at 3, even
        at 8, but 47 vs 15 ms at 16; at 64 base channels oneDNN is 2x faster from one stream on."""
        narrow = self.hift.config.base_channels < NATIVE_CONV_CHANNELS
        if self.device.type != "cpu" or not narrow or batch > NATIVE_CONV_MAX_BATCH:
            return contextlib.nullcontext()
        return host.native_convolutions()

    # -- per voice --------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare_voice(self, reference: torch.Tensor, max_prompt_seconds: float) -> VoicePrompt:
        """R1–R5 for a reference (N,) float32 at the model rate; runs in float32 (once per voice)."""
        ref = reference.to(self.device, torch.float32)[: int(self.sample_rate_hz * max_prompt_seconds)]
        ref16 = sinc_resample(ref, self.sample_rate_hz, CONTENT_RATE_HZ)
        prompt_mel = self.log_mel(ref[None])[0]
        style = self.campplus(kaldi_fbank(ref16, **self.fbank_options))[0]
        n_frames = torch.tensor([prompt_mel.shape[1]], device=self.device)
        prompt_condition = self.length_regulator(self.wav2vec2(ref16[None]), n_frames)[0]
        return VoicePrompt(ref16=ref16, prompt_mel=prompt_mel, style=style, prompt_condition=prompt_condition)

    # -- per block --------------------------------------------------------------------------------------------

    def draw_noise(self, target_frames: int, generator: torch.Generator) -> BlockNoise:
        """Fresh draws for one stream's block from its own generator (on the model's device)."""
        z = torch.randn(self.log_mel.mel_basis.shape[0], target_frames, generator=generator, device=self.device)
        phase, noise = self.hift.draw_source_noise(1, target_frames, generator)
        return BlockNoise(z=z, hift_phase=phase[0], hift_noise=noise[0])

    @torch.inference_mode()
    def convert(self, windows_16k: torch.Tensor, voices: Sequence[VoicePrompt], noise: Sequence[BlockNoise],
                geometry: StreamGeometry, diffusion_steps: int, cfg_rate: float,
                keep_intermediates: bool = False, micro_batch: int = 0) -> BlockOutputs:
        """Steps B4–B8 for B streams: windows_16k (B, W16) -> BlockOutputs with wav_slice (B, return_samples).

        `micro_batch` > 0 runs the batch in slices of that many streams (items are independent, so the result
        is the same): on a CPU, slices of a few tens keep the activations in cache (`engine.seedvc.CPU_MICRO_BATCH`).
        """
        size = micro_batch if micro_batch > 0 else max(len(voices), 1)
        parts = [self._convert_slice(windows_16k[i : i + size], voices[i : i + size], noise[i : i + size], geometry,
                                     diffusion_steps, cfg_rate, keep_intermediates)
                 for i in range(0, len(voices), size)]
        if len(parts) == 1:
            return parts[0]
        fields = ("wav_slice", "content", "cond", "mel", "f0") if keep_intermediates else ("wav_slice",)
        return BlockOutputs(**{name: torch.cat([getattr(p, name) for p in parts]) for name in fields})

    def _convert_slice(self, windows_16k: torch.Tensor, voices: Sequence[VoicePrompt], noise: Sequence[BlockNoise],
                       geometry: StreamGeometry, diffusion_steps: int, cfg_rate: float,
                       keep_intermediates: bool) -> BlockOutputs:
        windows_16k = windows_16k.to(self.device, torch.float32)
        with self._autocast():
            features = self.wav2vec2(windows_16k)
        content = features[:, geometry.dropped_frames :].float()
        target = geometry.target_frames
        ylens = torch.full((content.shape[0],), target, dtype=torch.int64, device=self.device)
        cond = self.length_regulator(content, ylens)
        mel = self.sample_mel(cond, voices, [n.z for n in noise], diffusion_steps, cfg_rate)
        wav_slice, f0 = self.vocode_slice(mel, noise, geometry)
        if not keep_intermediates:
            return BlockOutputs(wav_slice=wav_slice)
        return BlockOutputs(wav_slice=wav_slice, content=content, cond=cond, mel=mel, f0=f0)

    def sample_mel(self, cond: torch.Tensor, voices: Sequence[VoicePrompt], z: Sequence[torch.Tensor],
                   diffusion_steps: int, cfg_rate: float) -> torch.Tensor:
        """B6–B7: cond (B, target, C) -> generated mel (B, n_mels, target).

        Item b lies along time as [prompt_b (P_b) | generated (target) | padding to max P + target]."""
        target = cond.shape[1]
        prompt_lens = torch.tensor([v.prompt_frames for v in voices], dtype=torch.int64, device=self.device)
        prompt_mel = pad_sequence([v.prompt_mel.T for v in voices], batch_first=True)  # (B, P_max, n_mels)
        prompt_condition = pad_sequence([v.prompt_condition for v in voices], batch_first=True)  # (B, P_max, C)
        mu = after_prompt(prompt_condition, prompt_lens, cond)
        style = torch.stack([v.style for v in voices])
        with self._autocast():
            mel = sample_generated(self.dit.estimator, mu, prompt_lens + target, prompt_mel.transpose(1, 2),
                                   prompt_lens, style, torch.stack(list(z)), n_timesteps=diffusion_steps,
                                   cfg_rate=cfg_rate)
        return mel.float()

    def vocode_slice(self, mel: torch.Tensor, noise: Sequence[BlockNoise], geometry: StreamGeometry
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """B7–B8: mel (B, n_mels, target) -> (wav_slice (B, return_samples), f0 (B, target)).

        Only the vocoder output's tail that the slice reads is decoded, and the excitation is made only for the
        frames that tail depends on (`HiFTGenerator.first_decoded_frame`)."""
        with self._vocoder_convs(mel.shape[0]):
            with self._autocast():
                f0 = self.hift.predict_f0(mel).float()
            phase = torch.stack([n.hift_phase for n in noise]).to(self.device)
            source_noise = torch.stack([n.hift_noise for n in noise]).to(self.device)
            n_samples = mel.shape[2] * self.hift.samples_per_frame
            window = geometry.vocoder_slice(n_samples)
            first_frame = self.hift.first_decoded_frame(mel.shape[2], n_samples - window.start)
            source = self.hift.source(f0, phase, source_noise, first_sample=first_frame * self.hift.samples_per_frame)
            with self._autocast():
                tail = self.hift.decode_from(mel, source, first_frame, n_samples - window.start).float()
        return tail[:, : window.stop - window.start], f0
