"""Euler flow-matching sampler with classifier-free guidance (oracle spec 3.7), batched over items.

Item b lies along time as [prompt (P_b frames) | generated part | padding], valid in [0, x_lens[b]). Starting from
the noise z, N Euler steps on the linear grid linspace(0, 1, N+1) integrate the DiT velocity; with CFG rate r > 0
the velocity is (1 + r)·v(cond) − r·v(null), both branches in ONE doubled batch. After every step each item's own
prompt region is zeroed again. Item b of a batch equals item b sampled alone (the key-padding mask keeps the
padding out of attention), except for floating-point noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# estimator(x (B, 80, T), prompt_x (B, 80, T), x_lens (B,), t (B,), style (B, S), cond (B, T, C)) -> (B, 80, T)
Estimator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                     torch.Tensor]


def generated_region(prompt_lens: torch.Tensor, x_lens: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(B,) int64 each -> (B, 1, n_frames) bool, True in frames [prompt_lens[b], x_lens[b])."""
    frame = torch.arange(n_frames, device=x_lens.device)
    return ((frame >= prompt_lens[:, None]) & (frame < x_lens[:, None]))[:, None, :]


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


def euler_sample(estimator: Estimator, mu: torch.Tensor, x_lens: torch.Tensor, prompt: torch.Tensor,
                 prompt_lens: torch.Tensor, style: torch.Tensor, z: torch.Tensor, n_timesteps: int,
                 cfg_rate: float) -> torch.Tensor:
    """Sample mels for a batch of items.

    mu: (B, T, C) conditioning ([prompt condition; content] along time); x_lens: (B,) int64; prompt: (B, 80, P_max)
    valid in [0, prompt_lens[b]); style: (B, S); z: (B, 80, T) starting noise.
    Returns (B, 80, T), full length: zero in each item's prompt region [0, P_b) and from x_lens[b] on.
    """
    n_frames = z.shape[2]
    keep = generated_region(prompt_lens, x_lens, n_frames)
    prompt_x = place_prompt(prompt, prompt_lens, n_frames)
    guided = cfg_rate > 0
    if guided:
        prompt_x, style, mu, x_lens = with_null_branch(prompt_x, style, mu, x_lens)
    grid = torch.linspace(0, 1, n_timesteps + 1, dtype=torch.float32, device=z.device)
    t = grid[0]
    x = z * keep
    for step in range(1, n_timesteps + 1):
        dt = grid[step] - grid[step - 1]
        x_in = torch.cat([x, x]) if guided else x
        velocity = estimator(x_in, prompt_x, x_lens, t.expand(x_in.shape[0]), style, mu)
        if guided:
            cond_v, null_v = velocity.chunk(2)
            velocity = (1.0 + cfg_rate) * cond_v - cfg_rate * null_v
        x = (x + dt * velocity) * keep
        t = t + dt
    return x
