"""The `synthetic` and `seedvc` engines: batching that does not change a session's output, per-block draws,
loading tiny checkpoints in the official formats through the same path as the real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastvc.config import Config
from fastvc.engine.base import BlockRequest, EngineError, EngineLoadError, create_engine
from fastvc.model import weights
from official_files import local_model_config, populate_hub_cache, write_tiny_official
from voicekit import restore_torch_threads, voices_dir

STEPS = 3  # the property under test does not depend on the step count; few steps keep the tests fast

keep_torch_threads = pytest.fixture(autouse=True)(restore_torch_threads)


def synthetic_config(tmp_path) -> Config:
    config = Config()
    config.engine.preset = "tiny"
    config.engine.threads = 1
    config.voices.directory = str(voices_dir(tmp_path))
    return config


def request(engine, session: int, voice: str, seed: int, **overrides) -> BlockRequest:
    rng = np.random.default_rng(1000 + session)
    g = engine.geometry
    window = (0.1 * rng.standard_normal(g.window_16k)).astype(np.float32)
    recent = np.zeros(g.return_samples + g.extra_right, np.float32)
    fields = dict(voice_id=voice, seed=seed, diffusion_steps=STEPS, cfg_rate=0.7) | overrides
    return BlockRequest(f"s{session}", 0, window, recent, **fields)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def engine(tmp_path):
    config = synthetic_config(tmp_path)
    return create_engine("synthetic", config.stream.settings(), config=config)


def test_synthetic_engine_converts_a_block_per_request(engine):
    assert engine.voices() == ["long", "mid", "short"]
    results = engine.run_batch([request(engine, 0, "long", 1), request(engine, 1, "short", 2)])
    assert [r.session_id for r in results] == ["s0", "s1"]
    for result in results:
        assert result.audio.shape == (engine.geometry.return_samples,) and result.audio.dtype == np.float32
        assert np.isfinite(result.audio).all() and result.audio.std() > 1e-4


def test_a_session_gets_the_same_output_alone_or_batched_with_15_others(engine):
    voices = ["long", "mid", "short"]
    requests = [request(engine, i, voices[i % 3], seed=7 * i + 1) for i in range(16)]
    batched = engine.run_batch(requests)
    for req, together in zip(requests, batched):
        alone = engine.run_batch([req])[0]
        assert rel_l2(together.audio, alone.audio) <= 1e-5, req.session_id


def test_the_seed_decides_the_draws(engine):
    first = engine.run_batch([request(engine, 0, "mid", seed=5)])[0].audio
    again = engine.run_batch([request(engine, 0, "mid", seed=5)])[0].audio
    other = engine.run_batch([request(engine, 0, "mid", seed=6)])[0].audio
    np.testing.assert_array_equal(first, again)
    assert rel_l2(other, first) > 1e-3


def test_explicit_noise_replaces_the_seeded_draws(engine):
    model = engine.model or engine._ensure_model()
    drawn = model.draw_noise(engine.geometry.target_frames, torch.Generator().manual_seed(42))
    noise = {"z": drawn.z, "hift_phase": drawn.hift_phase, "hift_noise": drawn.hift_noise}
    given = engine.run_batch([request(engine, 0, "long", seed=1, noise=noise)])[0].audio
    seeded = engine.run_batch([request(engine, 0, "long", seed=42)])[0].audio
    np.testing.assert_array_equal(given, seeded)


def test_requests_with_other_steps_or_cfg_run_as_their_own_pass(engine):
    mixed = [request(engine, 0, "long", 1), request(engine, 1, "mid", 2, diffusion_steps=2),
             request(engine, 2, "short", 3, cfg_rate=0.0)]
    for together, req in zip(engine.run_batch(mixed), mixed):
        assert rel_l2(together.audio, engine.run_batch([req])[0].audio) <= 1e-5


def test_default_voice_alias_and_unknown_voices(engine):
    default = engine.run_batch([request(engine, 0, "default", 3)])[0].audio
    np.testing.assert_array_equal(default, engine.run_batch([request(engine, 0, "long", 3)])[0].audio)
    with pytest.raises(EngineError, match="nobody"):
        engine.run_batch([request(engine, 0, "nobody", 3)])


def test_unknown_presets_and_cpu_half_precision_are_refused(tmp_path):
    config = synthetic_config(tmp_path)
    with pytest.raises(EngineLoadError, match="preset"):
        create_engine("synthetic", config.stream.settings(), config=config, preset="huge")
    with pytest.raises(EngineLoadError, match="CUDA"):
        create_engine("synthetic", config.stream.settings(), config=config, device="cpu", dtype="float16")


def test_seedvc_engine_without_weights_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = synthetic_config(tmp_path)
    config.model.cache_dir = str(tmp_path / "empty-cache")
    with pytest.raises(EngineLoadError) as caught:
        create_engine("seedvc", config.stream.settings(), config=config)
    assert "fastvc download" in str(caught.value) and "DiT_uvit_tat_xlsr_ema.pth" in str(caught.value)


@pytest.fixture
def tiny_official(tmp_path, monkeypatch):
    """Tiny official-format checkpoints and the random model they were written from."""
    source, files, hift_config = write_tiny_official(tmp_path / "official")
    monkeypatch.setattr(weights, "HIFT_CONFIG", hift_config)
    return source, files


@pytest.mark.parametrize("where", ["local_paths", "hub_cache"])
def test_seedvc_engine_loads_official_format_checkpoints(tmp_path, monkeypatch, tiny_official, where):
    source, files = tiny_official
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = synthetic_config(tmp_path)
    if where == "local_paths":
        config.model = local_model_config(files)
    else:
        config.model.cache_dir = str(tmp_path / "hub")
        populate_hub_cache(tmp_path / "hub", files, config.model)
    engine = create_engine("seedvc", config.stream.settings(), config=config)
    req = request(engine, 0, "mid", seed=3)
    got = engine.run_batch([req])[0].audio
    voice = source.prepare_voice(torch.from_numpy(engine.library.reference("mid")), 3.0)
    noise = source.draw_noise(engine.geometry.target_frames, torch.Generator().manual_seed(3))
    expected = source.convert(torch.from_numpy(req.window_16k)[None], [voice], [noise], engine.geometry, STEPS, 0.7)
    np.testing.assert_allclose(got, expected.wav_slice[0].numpy(), atol=1e-6)


def test_a_checkpoint_that_does_not_fit_fails_loudly(tmp_path, monkeypatch, tiny_official):
    _, files = tiny_official
    net = torch.load(files["dit_checkpoint"], weights_only=True)
    net["net"]["cfm"]["module.estimator.final_mlp.2.weight"] = torch.zeros(80, 3)
    del net["net"]["length_regulator"]["module.model.0.bias"]
    torch.save(net, files["dit_checkpoint"])
    config = synthetic_config(tmp_path)
    config.model = local_model_config(files)
    engine = create_engine("seedvc", config.stream.settings(), config=config)
    with pytest.raises(EngineLoadError) as caught:
        engine.warmup()
    message = str(caught.value)
    assert "estimator.final_mlp.2.weight (80, 3) != (80, 16)" in message and "model.0.bias" in message


def test_prompt_frames_match_the_precomputed_prompts(engine):
    for voice in engine.voices():
        assert engine.prompt_frames(voice) == engine.voice_prompt(voice).prompt_frames
    assert engine.prompt_frames("long") == 258 and engine.prompt_frames("short") == 86


def test_micro_batches_give_the_same_block_as_one_pass(engine):
    model = engine._ensure_model()
    g = engine.geometry
    requests = [request(engine, i, ["long", "short"][i % 2], seed=i) for i in range(5)]
    voices = [engine.voice_prompt(r.voice_id) for r in requests]
    noise = [engine.block_noise(model, r) for r in requests]
    windows = torch.from_numpy(np.stack([r.window_16k for r in requests]))
    whole = model.convert(windows, voices, noise, g, STEPS, 0.7, keep_intermediates=True)
    sliced = model.convert(windows, voices, noise, g, STEPS, 0.7, keep_intermediates=True, micro_batch=2)
    for name in ("wav_slice", "content", "cond", "mel", "f0"):
        ours, ref = getattr(sliced, name), getattr(whole, name)
        assert ours.shape == ref.shape and float((ours - ref).norm() / ref.norm()) <= 1e-5, name
