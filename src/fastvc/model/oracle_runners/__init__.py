"""Adapters from oracle fixtures (`../shared/oracle/README.md`, section 2) to fastvc's model modules.

Each `run_<component>(fixture, fixture_dir)` builds the component from `fixture["config"]`, loads
`fixture["state_dict"]` strictly, runs it on `fixture["inputs"]` and returns a dict of output tensors named
as in `fixture["outputs"]`. Each `keys_<section>(section)` returns `{key: shape}` of the checkpoint that
fastvc's modules, built from the section's real config, expect (for `keys-full.json`).
"""
