"""Target voices: ids from file stems, WAV decoding, resampling to the model rate, the prompt cut."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import soxr

from fastvc.model.voices import SHIPPED_VOICES_DIR, UnknownVoiceError, VoiceError, VoiceLibrary, read_wav
from voicekit import tone, write_pcm16


def write_raw_wav(path, payload: bytes, format_tag: int, bits: int, channels: int, rate_hz: int) -> None:
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate_hz, rate_hz * block_align, block_align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_voice_ids_are_file_stems_and_the_default_is_resolved(tmp_path):
    for name in ("bob", "alice"):
        write_pcm16(tmp_path / f"{name}.wav", tone(0.5, 16000), 16000)
    (tmp_path / "notes.txt").write_text("not a voice")
    library = VoiceLibrary(tmp_path, 22050)
    assert library.ids() == ["alice", "bob"]
    assert library.resolve("default") == "alice" and library.resolve("") == "alice"
    assert VoiceLibrary(tmp_path, 22050, default_voice="bob").resolve("default") == "bob"


def test_unknown_voice_ids_are_refused(tmp_path):
    write_pcm16(tmp_path / "alice.wav", tone(0.5, 16000), 16000)
    library = VoiceLibrary(tmp_path, 22050)
    with pytest.raises(UnknownVoiceError, match="carol"):
        library.resolve("carol")
    with pytest.raises(UnknownVoiceError):
        VoiceLibrary(tmp_path, 22050, default_voice="carol")
    with pytest.raises(VoiceError):
        VoiceLibrary(tmp_path / "missing", 22050)


def test_reference_is_resampled_like_librosa_load_and_cut_to_the_prompt(tmp_path):
    signal = tone(5.0, 16000)
    write_pcm16(tmp_path / "v.wav", signal, 16000)
    ref = VoiceLibrary(tmp_path, 22050, max_prompt_seconds=3.0).reference("v")
    assert ref.dtype == np.float32 and ref.shape == (int(22050 * 3.0),)
    decoded = np.round(signal * 32767).astype(np.int16).astype(np.float32) / 32768.0
    expected = soxr.resample(decoded, 16000, 22050, "HQ")
    assert expected.shape[0] == math.ceil(decoded.shape[0] * 22050 / 16000)
    np.testing.assert_array_equal(ref, expected[: ref.shape[0]])


def test_short_references_are_kept_whole(tmp_path):
    write_pcm16(tmp_path / "v.wav", tone(1.0, 22050), 22050)
    assert VoiceLibrary(tmp_path, 22050, max_prompt_seconds=3.0).reference("v").shape == (22050,)


def test_stereo_is_mixed_down_to_the_channel_mean(tmp_path):
    left, right = tone(0.5, 22050, 220.0), tone(0.5, 22050, 330.0)
    write_pcm16(tmp_path / "v.wav", np.stack([left, right], axis=1), 22050)
    ref = VoiceLibrary(tmp_path, 22050).reference("v")
    np.testing.assert_allclose(ref, (left + right) / 2, atol=2 / 32768)


@pytest.mark.parametrize("encoding", ["pcm24", "float32", "pcm8"])
def test_other_wav_encodings_decode_to_the_same_signal(tmp_path, encoding):
    signal = tone(0.25, 16000)
    if encoding == "pcm24":
        ints = np.round(signal * (2**23 - 1)).astype("<i4")
        payload = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
        write_raw_wav(tmp_path / "v.wav", payload, 1, 24, 1, 16000)
        atol = 1e-6
    elif encoding == "float32":
        write_raw_wav(tmp_path / "v.wav", signal.astype("<f4").tobytes(), 3, 32, 1, 16000)
        atol = 0.0
    else:
        write_raw_wav(tmp_path / "v.wav", (np.round(signal * 127) + 128).astype(np.uint8).tobytes(), 1, 8, 1, 16000)
        atol = 1 / 64
    samples, rate_hz = read_wav(tmp_path / "v.wav")
    assert rate_hz == 16000 and samples.shape == (signal.shape[0], 1)
    np.testing.assert_allclose(samples[:, 0], signal, atol=atol)


def test_files_that_are_not_wav_are_refused(tmp_path):
    (tmp_path / "v.wav").write_bytes(b"ID3 not a wav at all")
    with pytest.raises(VoiceError, match="RIFF"):
        VoiceLibrary(tmp_path, 22050).reference("v")


def test_the_shipped_example_voices_load():
    library = VoiceLibrary(None, 22050)
    assert library.directory == SHIPPED_VOICES_DIR and "espeak-female" in library.ids()
    ref = library.reference("espeak-female")
    assert ref.shape == (66150,) and 0.01 < float(np.sqrt(np.mean(ref**2))) < 0.5
