"""Seed-VC's real-time block algorithm, per stream (oracle README section 3.9).

One `BlockStream` holds the state of one stream: the model-rate window, the 16 kHz window fed to the content
encoder, and the SOLA tail. It knows nothing about WebSockets, codecs or the model:

    samples at the model rate --push_block()--> BlockInput (windows for the model)
    model output slice        --stitch()------> samples to emit (SOLA cross-faded)

The server's sessions and the oracle checker (`fastvc.model.check`) both use this class, so the algorithm is
written once. Sizes follow the spec's exact arithmetic (`StreamGeometry`); "unit" below means 20 ms (zc).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import soxr

CONTENT_RATE_HZ = 16000
"""Rate of the content (XLS-R) and style (CAMPPlus) encoders."""

CONTENT_SAMPLES_PER_UNIT = CONTENT_RATE_HZ // 50  # 320: one 20 ms unit, one XLS-R frame
XLSR_RECEPTIVE_FIELD = 400  # samples at 16 kHz of the first XLS-R frame


@dataclass(frozen=True)
class StreamSettings:
    """The real-time settings of Seed-VC (seconds). Defaults: fastvc's 180 ms blocks."""

    block_time_s: float = 0.18
    crossfade_time_s: float = 0.04
    extra_time_ce_s: float = 2.5
    extra_time_s: float = 0.5
    extra_time_right_s: float = 0.02


def round_to_units(time_s: float, model_rate_hz: int) -> int:
    """`n(t) = round(t·sr/zc)·zc` samples, round-half-to-even in float64 (spec 3.9)."""
    zc = model_rate_hz // 50
    return round(time_s * model_rate_hz / zc) * zc


@dataclass(frozen=True)
class StreamGeometry:
    """Every size the block algorithm uses, derived once from the settings and the model's rate and hop.

    Samples are at the model rate unless the name says 16k; `*_units` are 20 ms units; frames are mel frames.
    """

    model_rate_hz: int
    hop_length: int
    zc: int
    block: int
    crossfade: int
    extra: int
    extra_right: int
    dropped_frames: int  # d: XLS-R frames dropped from the window's start
    sola_buffer: int
    sola_search: int
    window: int  # W22
    window_16k: int  # W16
    block_16k: int
    skip_head_units: int
    skip_tail_units: int
    return_units: int
    target_frames: int  # mel frames generated per block

    @classmethod
    def from_settings(cls, settings: StreamSettings, model_rate_hz: int, hop_length: int) -> StreamGeometry:
        sr = model_rate_hz
        zc = sr // 50
        block = round_to_units(settings.block_time_s, sr)
        crossfade = round_to_units(settings.crossfade_time_s, sr)
        extra = round_to_units(settings.extra_time_ce_s, sr)
        extra_right = round_to_units(settings.extra_time_right_s, sr)
        dropped = int((settings.extra_time_ce_s - settings.extra_time_s) * 50)
        sola_buffer = min(crossfade, 4 * zc)
        sola_search = zc
        window = extra + crossfade + sola_search + block + extra_right
        skip_head, skip_tail = extra // zc, extra_right // zc
        return_units = (block + sola_buffer + sola_search) // zc
        target = int((skip_head + return_units + skip_tail - dropped) / 50 * sr // hop_length)
        geometry = cls(
            model_rate_hz=sr,
            hop_length=hop_length,
            zc=zc,
            block=block,
            crossfade=crossfade,
            extra=extra,
            extra_right=extra_right,
            dropped_frames=dropped,
            sola_buffer=sola_buffer,
            sola_search=sola_search,
            window=window,
            window_16k=CONTENT_SAMPLES_PER_UNIT * window // zc,
            block_16k=CONTENT_SAMPLES_PER_UNIT * block // zc,
            skip_head_units=skip_head,
            skip_tail_units=skip_tail,
            return_units=return_units,
            target_frames=target,
        )
        geometry.validate()
        return geometry

    def validate(self) -> None:
        """Refuse settings for which upstream's arithmetic breaks (spec 3.9, 'Limits')."""
        if self.block <= 0:
            raise ValueError("block_time_s must round to at least one 20 ms unit")
        if self.extra_right < self.zc:
            raise ValueError("extra_time_right_s must round to at least 20 ms (the returned slice would be empty)")
        if self.skip_head_units - self.dropped_frames < 1:
            raise ValueError("extra_time_s must be at least about 0.02 s (the vocoder output would be too short)")
        if self.sola_buffer < 2:
            raise ValueError("crossfade_time_s must round to at least 20 ms")
        if self.content_frames_kept < 1:
            raise ValueError("extra_time_ce_s is too short for the content encoder")

    @property
    def return_samples(self) -> int:
        """Length of the model output slice that SOLA consumes: block + sola_buffer + sola_search."""
        return self.return_units * self.zc

    @property
    def content_frames(self) -> int:
        """T16: XLS-R frames of the 16 kHz window."""
        return (self.window_16k - XLSR_RECEPTIVE_FIELD) // CONTENT_SAMPLES_PER_UNIT + 1

    @property
    def content_frames_kept(self) -> int:
        return self.content_frames - self.dropped_frames

    @property
    def chunk_16k(self) -> int:
        """Samples written into the 16 kHz window per block: the new block plus the redone last 20 ms."""
        return CONTENT_SAMPLES_PER_UNIT * (self.block // self.zc + 1)

    @property
    def lead_in_samples(self) -> int:
        """How far the emitted stream lags the input stream, beyond block buffering (model-rate samples).

        Block b emits input positions starting `sola_buffer + sola_search + extra_right` before the end of
        block b-1, so the first `lead_in_samples` emitted samples precede the input's start.
        """
        return self.sola_buffer + self.sola_search + self.extra_right

    @property
    def algorithmic_latency_s(self) -> float:
        """Worst-case delay from a sample entering to it leaving, without compute: one block + the lead-in."""
        return (self.block + self.lead_in_samples) / self.model_rate_hz

    def vocoder_slice(self, n_samples: int) -> slice:
        """Step B8: the `return_samples` of a vocoder output of `n_samples` that end `skip_tail` units early."""
        end = n_samples - self.skip_tail_units * self.zc
        return slice(end - self.return_samples, end)


@dataclass
class BlockInput:
    """What the model needs from one stream for one block (copies; the stream may move on).

    window_16k: (window_16k,) float32 — the whole 16 kHz window, input of the content encoder (B4).
    recent: (return_samples + extra_right,) float32 — the newest model-rate samples of the window; the
        passthrough engine returns `recent[:return_samples]`, which is what the model's slice is aligned to.
    chunk_16k: (chunk_16k,) float32 — the samples written into the 16 kHz window this block (step B3).
    """

    block_index: int
    window_16k: np.ndarray
    recent: np.ndarray
    chunk_16k: np.ndarray


@dataclass
class StitchResult:
    """out: (block,) float32 samples to emit; offset and scores: the SOLA search (B10)."""

    out: np.ndarray
    offset: int
    scores: np.ndarray


def loudest_frame_db(samples: np.ndarray, frame: int) -> float:
    """Level (dBFS, RMS) of the loudest `frame`-sample frame among the newest whole frames of `samples`.

    The silence gate compares this with its threshold on `BlockInput.recent`, which covers every input sample
    the block's output slice is made from (plus the right context): a gated block's output would have been
    made of silence, so skipping it cannot cut a speech onset, and the next block's SOLA fade joins it.
    """
    n = samples.shape[0] // frame * frame
    if n == 0:
        return -math.inf
    frames = samples[samples.shape[0] - n :].reshape(-1, frame).astype(np.float64)
    loudest = float(np.max(np.einsum("ij,ij->i", frames, frames))) / frame
    return 10.0 * math.log10(loudest) if loudest > 0.0 else -math.inf


def fade_in_window(n: int) -> np.ndarray:
    """`sin²(π/2 · j/(n−1))` for j = 0…n−1, both end points included, in float32."""
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    return (np.sin(np.float32(np.pi / 2) * ramp) ** 2).astype(np.float32)


def sola_scores(head: np.ndarray, prev: np.ndarray, search: int) -> np.ndarray:
    """Normalised cross-correlation of `prev` against `head` at offsets 0…search (B10). Returns (search+1,).

    head: (search + len(prev),) float32; prev: (sola_buffer,) float32. Computed in float64.
    """
    sb = prev.shape[0]
    head64 = head[: search + sb].astype(np.float64)
    numerator = np.correlate(head64, prev.astype(np.float64), "valid")  # (search+1,): no (search+1, sb) copy
    energy = np.concatenate(([0.0], np.cumsum(head64 * head64)))
    window_energy = energy[sb : sb + search + 1] - energy[: search + 1]
    return numerator / np.sqrt(np.maximum(window_energy, 0.0) + 1e-8)


def window_tail(geometry: StreamGeometry) -> int:
    """Samples of the model-rate window W22 the block algorithm reads: the `recent` slice and B3's segment."""
    recent = geometry.return_samples + geometry.extra_right
    return min(geometry.window, max(recent, geometry.block + 2 * geometry.zc))


class BlockStream:
    """One stream's state for the block algorithm: the model-rate window, the 16 kHz window, the SOLA tail.

    All three start as zeros (spec 3.9, 'State'); of the model-rate window only the tail that is read is kept
    (`window_tail`). Call `push_block` with each block of `geometry.block` new
    samples, run the model on the returned `BlockInput`, then `stitch` its output slices in block order.

    content_window: False for engines that never read the 16 kHz window (passthrough, cost-model): step B3 and
        the window's upkeep are skipped and `BlockInput.window_16k`/`chunk_16k` are empty, saving host CPU.
    """

    def __init__(self, geometry: StreamGeometry, *, content_window: bool = True) -> None:
        self.geometry = geometry
        self.content_window = content_window
        # The newest samples of the model-rate window W22: only its tail is ever read (the `recent` slice and
        # B3's segment), so the rest is not kept. Shifting all of W22 each block moved ~240 KB per session
        # per block through memory (out of cache at hundreds of sessions) for nothing.
        self.window = np.zeros(window_tail(geometry), dtype=np.float32)
        self.window_16k = np.zeros(geometry.window_16k if content_window else 0, dtype=np.float32)
        # One soxr resampler reused (cleared) for every B3: the same output as a one-shot call, without
        # designing the filter again each block.
        self._resampler = soxr.ResampleStream(geometry.model_rate_hz, CONTENT_RATE_HZ, 1, dtype="float32",
                                              quality="HQ")
        self.prev = np.zeros(geometry.sola_buffer, dtype=np.float32)
        self.blocks_pushed = 0
        self.blocks_stitched = 0
        self._fade_in = fade_in_window(geometry.sola_buffer)
        self._fade_out = (np.float32(1.0) - self._fade_in).astype(np.float32)

    def push_block(self, block: np.ndarray) -> BlockInput:
        """Steps B2–B3 for `block` (geometry.block,) float32 at the model rate; returns the model's input."""
        g = self.geometry
        if block.shape != (g.block,):
            raise ValueError(f"block must have shape ({g.block},), got {block.shape}")
        self.window[: -g.block] = self.window[g.block :]
        self.window[-g.block :] = block
        if self.content_window:
            chunk = self._resample_newest()
            self.window_16k[: -g.block_16k] = self.window_16k[g.block_16k :]
            self.window_16k[-chunk.shape[0] :] = chunk
        else:
            chunk = self.window_16k  # empty
        recent_len = g.return_samples + g.extra_right
        request = BlockInput(
            block_index=self.blocks_pushed,
            window_16k=self.window_16k.copy(),
            recent=self.window[-recent_len:].copy(),
            chunk_16k=chunk,
        )
        self.blocks_pushed += 1
        return request

    def _resample_newest(self) -> np.ndarray:
        """B3: libsoxr HQ of the last block + 2 units, minus its first 16 kHz unit. Returns (chunk_16k,)."""
        g = self.geometry
        segment = self.window[-(g.block + 2 * g.zc) :]
        resampled = self._resampler.resample_chunk(segment, last=True)
        self._resampler.clear()
        expected = math.ceil(segment.shape[0] * CONTENT_RATE_HZ / g.model_rate_hz)
        if resampled.shape[0] != expected:
            raise RuntimeError(f"soxr returned {resampled.shape[0]} samples, expected {expected}")
        return resampled[CONTENT_SAMPLES_PER_UNIT:]

    def stitch(self, model_slice: np.ndarray) -> StitchResult:
        """Step B10 (SOLA) on the model's output slice (return_samples,) float32; returns (block,) to emit."""
        g = self.geometry
        if model_slice.shape != (g.return_samples,):
            raise ValueError(f"model slice must have shape ({g.return_samples},), got {model_slice.shape}")
        scores = sola_scores(model_slice, self.prev, g.sola_search)
        return self.stitch_at(model_slice, int(np.argmax(scores)), scores)  # lowest index on ties

    def stitch_at(self, model_slice: np.ndarray, offset: int, scores: np.ndarray) -> StitchResult:
        """The rest of B10 once the offset is known (`stitch`, or `stitch_batch` for many streams at once)."""
        g = self.geometry
        y = model_slice[offset:].astype(np.float32, copy=True)
        sb = g.sola_buffer
        y[:sb] = y[:sb] * self._fade_in + self.prev * self._fade_out
        self.prev = y[g.block : g.block + sb].copy()
        self.blocks_stitched += 1
        return StitchResult(out=y[: g.block].copy(), offset=offset, scores=scores)


STITCH_ROWS_PER_PASS = 16
"""Streams whose SOLA search is computed together: the FFT's work arrays stay in cache."""

SOLA_SCORE_TOLERANCE = 1e-10
"""Bound on a batched score's error relative to |head|·|prev|/denominator (FFT rounding is ~1e-14 of it)."""


def stitch_batch(streams: list[BlockStream], model_slices: list[np.ndarray]) -> list[StitchResult]:
    """`stream.stitch(model_slice)` for many streams of one geometry at once; the same offsets and samples.

    The cross-correlations of all streams are computed together by FFT (about half the CPU of one
    `np.correlate` each). FFT rounding differs from the direct sum by ~1e-14 of the score's scale, so a row
    whose best score is not ahead of every other by more than `SOLA_SCORE_TOLERANCE` of that scale (near-ties,
    silence) is searched again exactly with `sola_scores`: every offset is the one `stitch` picks.
    """
    if not streams:
        return []
    g = streams[0].geometry
    for model_slice in model_slices:
        if model_slice.shape != (g.return_samples,):
            raise ValueError(f"model slice must have shape ({g.return_samples},), got {model_slice.shape}")
    results = []
    for start in range(0, len(streams), STITCH_ROWS_PER_PASS):
        rows = slice(start, start + STITCH_ROWS_PER_PASS)
        heads = np.stack(model_slices[rows])
        prevs = np.stack([stream.prev for stream in streams[rows]])
        scores, sure = _batched_scores(heads, prevs, g.sola_search)
        offsets = np.argmax(scores, axis=1)
        for i, stream in enumerate(streams[rows]):
            model_slice = model_slices[start + i]
            row = scores[i] if sure[i] else sola_scores(model_slice, stream.prev, g.sola_search)
            offset = int(offsets[i]) if sure[i] else int(np.argmax(row))
            results.append(stream.stitch_at(model_slice, offset, row))
    return results


def fft_size(n: int) -> int:
    """The smallest 2^k or 3·2^k that is >= n (pocketfft is fast on both)."""
    power = 1 << max(n - 1, 0).bit_length()
    return 3 * power // 4 if 3 * power // 4 >= n else power


def _batched_scores(heads: np.ndarray, prevs: np.ndarray, search: int) -> tuple[np.ndarray, np.ndarray]:
    """`sola_scores` of each row of heads (n, ≥search+sb) against prevs (n, sb) by FFT; returns the scores
    (n, search+1) and, per row, whether its argmax is certainly the direct computation's."""
    sb = prevs.shape[1]
    head64 = heads[:, : search + sb].astype(np.float64)
    prev64 = prevs.astype(np.float64)
    size = fft_size(search + sb)  # no wrap-around for lags 0…search
    spectrum = np.fft.rfft(head64, size, axis=1) * np.fft.rfft(prev64[:, ::-1], size, axis=1)
    numerator = np.fft.irfft(spectrum, size, axis=1)[:, sb - 1 : sb + search]
    energy = np.concatenate((np.zeros((head64.shape[0], 1)), np.cumsum(head64 * head64, axis=1)), axis=1)
    window_energy = energy[:, sb : sb + search + 1] - energy[:, : search + 1]
    denominator = np.sqrt(np.maximum(window_energy, 0.0) + 1e-8)
    scores = numerator / denominator
    scale = np.linalg.norm(head64, axis=1) * np.linalg.norm(prev64, axis=1)
    tolerance = SOLA_SCORE_TOLERANCE * scale[:, None] / denominator
    rows = np.arange(scores.shape[0])
    best = np.argmax(scores, axis=1)
    others = scores + tolerance
    others[rows, best] = -np.inf
    sure = scores[rows, best] - tolerance[rows, best] > others.max(axis=1)
    return scores, sure
