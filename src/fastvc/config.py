"""Server configuration: `server.toml`, grouped by theme, every field with its default.

    load_config(path) -> Config   (missing file or section: defaults; unknown key: ConfigError)

Environment overrides: `FASTVC_API_KEYS` (comma-separated) adds API keys.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fastvc.scheduler import SchedulerSettings
from fastvc.stream import StreamSettings

_POLICY = SchedulerSettings()
"""The scheduler's own defaults: `[scheduler]` takes them from here rather than restating them."""


class ConfigError(ValueError):
    """The configuration file is malformed or holds an unknown or invalid option."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 256
    max_message_bytes: int = 1 << 20
    receive_timeout_s: float = 30.0
    drain_timeout_s: float = 10.0
    state_dir: str = "~/.cache/fastvc"
    max_blocks_in_flight: int = 2
    codec_threads: int = 2
    default_sample_rate_out_hz: int = 16000
    opus_bitrate_bps: int = 32000
    max_diffusion_steps: int = 100


@dataclass
class AuthConfig:
    api_keys: list[str] = field(default_factory=list)
    api_keys_env: str = "FASTVC_API_KEYS"


@dataclass
class StreamConfig:
    block_time_s: float = 0.18
    crossfade_time_s: float = 0.04
    extra_time_ce_s: float = 2.5
    extra_time_s: float = 0.5
    extra_time_right_s: float = 0.02
    diffusion_steps: int = 10
    inference_cfg_rate: float = 0.7
    max_prompt_seconds: float = 3.0
    silence_gate: bool = False
    silence_threshold_db: float = -60.0

    def settings(self) -> StreamSettings:
        return StreamSettings(self.block_time_s, self.crossfade_time_s, self.extra_time_ce_s, self.extra_time_s,
                              self.extra_time_right_s)


@dataclass
class SchedulerConfig:
    """Micro-batching policy; see `fastvc.scheduler` for what each knob does."""

    max_batch_size: int = _POLICY.max_batch_size
    max_wait_ms: float = _POLICY.max_wait_ms
    safety_margin_ms: float = _POLICY.safety_margin_ms
    conceal_late_ms: float = _POLICY.conceal_late_ms
    prompt_buckets: bool = _POLICY.prompt_buckets
    prompt_bucket_frames: int = _POLICY.prompt_bucket_frames
    adaptive_steps: bool = _POLICY.adaptive_steps
    min_diffusion_steps: int = _POLICY.min_diffusion_steps
    steps_step_down: int = _POLICY.steps_step_down
    recover_after_batches: int = _POLICY.recover_after_batches
    overload_hold_s: float = _POLICY.overload_hold_s
    calibration_sizes: list[int] = field(default_factory=lambda: [1, 4])


@dataclass
class EngineConfig:
    name: str = "seedvc"
    device: str = "auto"
    dtype: str = "auto"
    preset: str = "tiny"
    threads: int = 0
    seed: int = 0
    cost_a_ms: float = 20.0
    cost_b_ms: float = 0.5


@dataclass
class ModelConfig:
    cache_dir: str = ""
    dit_repo: str = "Plachta/Seed-VC"
    dit_checkpoint: str = "DiT_uvit_tat_xlsr_ema.pth"
    dit_config: str = "config_dit_mel_seed_uvit_xlsr_tiny.yml"
    wav2vec2_repo: str = "facebook/wav2vec2-xls-r-300m"
    campplus_repo: str = "funasr/campplus"
    campplus_file: str = "campplus_cn_common.bin"
    hift_repo: str = "FunAudioLLM/CosyVoice-300M"
    hift_file: str = "hift.pt"
    dit_checkpoint_path: str = ""
    dit_config_path: str = ""
    wav2vec2_path: str = ""
    campplus_path: str = ""
    hift_path: str = ""


@dataclass
class VoicesConfig:
    directory: str = ""
    default_voice: str = ""


@dataclass
class RecordingConfig:
    enabled: bool = False
    directory: str = "recordings"
    retention_days: int = 7


@dataclass
class LoggingConfig:
    level: str = "info"
    format: str = "auto"
    directory: str = "logs"


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    voices: VoicesConfig = field(default_factory=VoicesConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def api_keys(self) -> list[str]:
        """Keys from the file plus the comma-separated environment variable named by `auth.api_keys_env`."""
        from_env = os.environ.get(self.auth.api_keys_env, "") if self.auth.api_keys_env else ""
        return [k for k in self.auth.api_keys if k] + [k.strip() for k in from_env.split(",") if k.strip()]


def _build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"[{section}]: unknown option(s) {', '.join(unknown)}")
    defaults = cls()
    for name, value in values.items():
        expected = type(getattr(defaults, name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"[{section}] {name}: expected {expected.__name__}, got {value!r}")
        values[name] = value
    return cls(**values)


def config_from_dict(data: dict[str, Any]) -> Config:
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}")
    config = Config()
    for f in dataclasses.fields(Config):
        if f.name in data:
            if not isinstance(data[f.name], dict):
                raise ConfigError(f"[{f.name}] must be a table")
            cls = type(getattr(config, f.name))
            setattr(config, f.name, _build_section(cls, dict(data[f.name]), f.name))
    return config


def load_config(path: str | Path | None) -> Config:
    """Read `path` (TOML); None or a missing default file gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {path}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from error
    return config_from_dict(data)
