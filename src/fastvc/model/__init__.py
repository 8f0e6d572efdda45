"""Seed-VC's real-time model (seed-uvit-tat-xlsr-tiny), written for fastvc from the oracle spec.

Components, one module each: `audio` (log-mel, Kaldi fbank, resampling), `wav2vec2` (XLS-R content encoder),
`campplus` (speaker encoder), `length_regulator`, `dit` (velocity estimator), `cfm` (Euler sampler with CFG),
`hift` (vocoder). `check` verifies them against the oracle fixtures.
"""
