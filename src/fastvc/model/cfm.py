"""Euler flow-matching sampler with classifier-free guidance (oracle spec 3.7), batched over items.

Item b lies along time as [prompt (P_b frames) | generated part | padding], valid in [0, x_lens[b]). Starting from
the noise z, N Euler steps on the linear grid linspace(0, 1, N+1) integrate the DiT velocity; with CFG rate r > 0
the velocity is (1 + r)·v(cond) − r·v(null), both branches in ONE doubled batch. After every step each item's own
prompt region is zeroed again, so only the generated part is carried from step to step and only its velocity is
asked of the estimator (its last layer then runs on those frames alone). Item b of a batch equals item b sampled
alone (the key-padding mask keeps the padding out of attention), except for floating-point noise.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import torch
import torch.nn.functional as F


class Estimator(Protocol):
    """What the sampler needs of the velocity estimator (`dit.VelocityEstimator`)."""

    def condition(self, prompt_x: torch.Tensor, x_lens: torch.Tensor, style: torch.Tensor, cond: torch.Tensor,
                  frames: torch.Tensor) -> Any:
        """prompt_x (B, 80, T), x_lens (B,), style (B, S), cond (B, T, C), frames (B, Q) distinct per item
        -> what every step reuses."""

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """t (K,) -> the time embeddings (K, D)."""

    def velocity(self, x: torch.Tensor, t1: torch.Tensor, conditioning: Any) -> torch.Tensor:
        """x (B, Q, 80) at the conditioning's frames (zero at every other), t1 (1, D) -> velocity (B, Q, 80)."""


def generated_frames(prompt_lens: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each item's generated part lies: (frames (B, G) int64, keep (B, 1, G) bool), G = max(x_lens − P).

    frames[b, g] = P_b + g, up to max(P) + G − 1 (past x_lens[b] for a shorter item: padding); keep[b, 0, g] is
    True for g < x_lens[b] − P_b.
    """
    gen_lens = x_lens - prompt_lens
    offset = torch.arange(int(gen_lens.max()), device=x_lens.device)
    return prompt_lens[:, None] + offset, (offset < gen_lens[:, None])[:, None, :]


def place_generated(x_gen: torch.Tensor, prompt_lens: torch.Tensor, keep: torch.Tensor, n_frames: int
                    ) -> torch.Tensor:
    """x_gen (B, 80, G) -> (B, 80, n_frames): frame P_b + g holds x_gen[b, :, g] where keep, zero elsewhere."""
    n_gen = x_gen.shape[2]
    frame = torch.arange(n_frames, device=x_gen.device)
    source = frame - prompt_lens[:, None]  # (B, n_frames): which generated frame lands here
    inside = (source >= 0) & (source < n_gen)
    inside &= torch.gather(keep[:, 0], 1, source.clamp(0, n_gen - 1))
    source = torch.where(inside, source, n_gen)  # the zero column
    pool = torch.cat([x_gen, x_gen.new_zeros(x_gen.shape[0], x_gen.shape[1], 1)], dim=2)
    return torch.gather(pool, 2, source[:, None, :].expand(-1, x_gen.shape[1], -1))


def place_prompt(prompt: torch.Tensor, prompt_lens: torch.Tensor, n_frames: int) -> torch.Tensor:
    """prompt (B, 80, P_max) valid in [0, P_b) -> prompt_x (B, 80, n_frames), zero from P_b on."""
    padded = F.pad(prompt, (0, n_frames - prompt.shape[2]))
    keep = torch.arange(n_frames, device=prompt.device) < prompt_lens[:, None]
    return padded * keep[:, None, :]


def with_null_branch(prompt_x: torch.Tensor, style: torch.Tensor, mu: torch.Tensor, x_lens: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack the CFG null inputs (prompt_x, style and mu zero; same x_lens) after the conditional ones: 2B items."""
    return (torch.cat([prompt_x, torch.zeros_like(prompt_x)]), torch.cat([style, torch.zeros_like(style)]),
            torch.cat([mu, torch.zeros_like(mu)]), torch.cat([x_lens, x_lens]))


@functools.lru_cache(maxsize=32)
def euler_grid(n_timesteps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The steps on linspace(0, 1, N+1) in float32: (the time at each step's start, each step's dt), the time
    summed up step by step in float32; float32 values held in Python floats (made once per N)."""
    grid = torch.linspace(0, 1, n_timesteps + 1, dtype=torch.float32)
    steps = [grid[step] - grid[step - 1] for step in range(1, n_timesteps + 1)]
    t, times = grid[0], []
    for dt in steps:
        times.append(float(t))
        t = t + dt
    return tuple(times), tuple(float(dt) for dt in steps)


def euler_sample(estimator: Estimator, mu: torch.Tensor, x_lens: torch.Tensor, prompt: torch.Tensor,
                 prompt_lens: torch.Tensor, style: torch.Tensor, z: torch.Tensor, n_timesteps: int,
                 cfg_rate: float) -> torch.Tensor:
    """Sample mels for a batch of items.

    mu: (B, T, C) conditioning ([prompt condition; content] along time); x_lens: (B,) int64; prompt: (B, 80, P_max)
    valid in [0, prompt_lens[b]); style: (B, S); z: (B, 80, T) starting noise.
    Returns (B, 80, T), full length: zero in each item's prompt region [0, P_b) and from x_lens[b] on.
    """
    frames, keep = generated_frames(prompt_lens, x_lens)
    z = F.pad(z, (0, max(0, int(frames.max()) + 1 - z.shape[2])))
    x_gen = sample_generated(estimator, mu, x_lens, prompt, prompt_lens, style,
                             torch.gather(z, 2, frames[:, None, :].expand(-1, z.shape[1], -1)), n_timesteps, cfg_rate)
    return place_generated(x_gen, prompt_lens, keep, mu.shape[1])


def sample_generated(estimator: Estimator, mu: torch.Tensor, x_lens: torch.Tensor, prompt: torch.Tensor,
                     prompt_lens: torch.Tensor, style: torch.Tensor, z_gen: torch.Tensor, n_timesteps: int,
                     cfg_rate: float) -> torch.Tensor:
    """`euler_sample` holding only the generated parts: z_gen (B, 80, G) is the starting noise of frames
    P_b … P_b + G − 1 (G = max(x_lens − P)) -> their mels (B, 80, G), zero past x_lens[b] − P_b.

    Only the generated frames change (the prompt region is zeroed after every step), so the estimator is asked
    for their velocity alone; it still sees every frame of [prompt | generated] as keys.
    """
    frames, keep = generated_frames(prompt_lens, x_lens)
    n_frames = max(mu.shape[1], int(frames.max()) + 1)  # a short item's padding frames may reach past T
    mu = F.pad(mu, (0, 0, 0, n_frames - mu.shape[1]))
    prompt_x = place_prompt(prompt, prompt_lens, n_frames)
    guided = cfg_rate > 0
    if guided:
        prompt_x, style, mu, x_lens = with_null_branch(prompt_x, style, mu, x_lens)
        frames = torch.cat([frames, frames])
    conditioning = estimator.condition(prompt_x, x_lens, style, mu, frames)
    times, steps = euler_grid(n_timesteps)
    time_tokens = estimator.embed_time(torch.tensor(times, device=z_gen.device))  # every step's, in one pass
    keep = keep.transpose(1, 2)
    x_gen = z_gen.transpose(1, 2) * keep  # time-major (B, G, 80) through the steps
    for step, dt in enumerate(steps):
        x_in = torch.cat([x_gen, x_gen]) if guided else x_gen
        velocity = estimator.velocity(x_in, time_tokens[step : step + 1], conditioning)
        if guided:
            cond_v, null_v = velocity.chunk(2)
            velocity = (1.0 + cfg_rate) * cond_v - cfg_rate * null_v
        x_gen = (x_gen + dt * velocity) * keep
    return x_gen.transpose(1, 2)
