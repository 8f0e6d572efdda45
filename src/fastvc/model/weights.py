"""Seed-VC's checkpoint files: where they come from, how they are read, and strict loading into fastvc's modules.

    ModelConfig --resolve_weight_files()--> WeightFiles   (hub files via huggingface_hub's cache; local paths win)
    WeightFiles --read_checkpoint()-------> SeedVCCheckpoint (component configs + state dicts under module names)
    module, state dict --load_strict()----> the module loaded, or WeightsError listing every problem

The official files (oracle README, section 5): `Plachta/Seed-VC` `DiT_uvit_tat_xlsr_ema.pth` (`torch.load(f)['net']`
with `cfm` and `length_regulator` sub-dicts) + `config_dit_mel_seed_uvit_xlsr_tiny.yml`; `facebook/wav2vec2-xls-r-300m`
(a transformers-format directory holding a *pre-training* model); `funasr/campplus` `campplus_cn_common.bin` and
`FunAudioLLM/CosyVoice-300M` `hift.pt` (plain state dicts). `HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_HOME` act as
huggingface_hub documents; downloads show its progress bars.

Keys the forward pass never uses are dropped *knowingly* (`DOCUMENTED_UNUSED`, logged); anything else that is
missing, unexpected or of the wrong shape raises `WeightsError`. Exceptions:

    WeightsError (RuntimeError)          a checkpoint does not fit the model, or cannot be read
     └── MissingWeightsError             files are neither local nor in the cache, and could not be fetched
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
import yaml

log = structlog.get_logger("fastvc.weights")

CONTENT_RATE_HZ = 16000

WAV2VEC2_FILES = ("config.json", "preprocessor_config.json", "pytorch_model.bin")
"""The transformers-format files of the content encoder fetched from the hub (weights: `pytorch_model.bin`)."""

MAX_LISTED_KEYS = 12
"""How many keys an error message lists per kind of problem (the count is always given)."""

# Values that are not in the downloaded files: Seed-VC ships them in its code or its `configs/hifigan.yml`
# (oracle README 3.2, 3.8 and 5). The yaml sets the DiT, the length regulator, the mel and the style width.
KALDI_FBANK_CONFIG: dict[str, Any] = {
    "num_mel_bins": 80, "sample_frequency": 16000, "dither": 0.0, "frame_length": 25.0, "frame_shift": 10.0,
    "preemphasis_coefficient": 0.97, "remove_dc_offset": True, "window_type": "povey",
    "round_to_power_of_two": True, "snip_edges": True, "low_freq": 20.0, "high_freq": 0.0,
    "use_log_fbank": True, "use_power": True, "use_energy": False, "subtract_mean": False,
    "subtract_utterance_mean": True,
}
HIFT_CONFIG: dict[str, Any] = {
    "hift": {
        "in_channels": 80, "base_channels": 512, "nb_harmonics": 8, "sampling_rate": 22050, "nsf_alpha": 0.1,
        "nsf_sigma": 0.003, "nsf_voiced_threshold": 10, "upsample_rates": [8, 8], "upsample_kernel_sizes": [16, 16],
        "istft_params": {"n_fft": 16, "hop_len": 4}, "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "source_resblock_kernel_sizes": [7, 11],
        "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]], "lrelu_slope": 0.1, "audio_limit": 0.99,
    },
    "f0_predictor": {"num_class": 1, "in_channels": 80, "cond_channels": 512},
}
FEATURE_EXTRACTOR_DEFAULTS: dict[str, Any] = {
    "feature_size": 1, "sampling_rate": 16000, "padding_value": 0.0, "do_normalize": True,
    "return_attention_mask": True,
}
DEFAULT_OUTPUT_LAYER = 12
"""Seed-VC's `speech_tokenizer.output_layer` for XLS-R when the yaml does not say."""

COMPONENTS = ("wav2vec2", "length_regulator", "dit", "campplus", "hift")

DOCUMENTED_UNUSED: dict[str, tuple[str, ...]] = {
    "wav2vec2": (r"masked_spec_embed",),  # SpecAugment vector; layers >= output_layer: see wav2vec2_state_dict
    "length_regulator": (r"embedding\.weight", r"mask_token"),  # discrete-content codebook, training mask
    "dit": (
        r"estimator\.x_embedder\.(weight_g|weight_v|bias)",
        r"estimator\.cond_embedder\.weight",
        r"estimator\.skip_linear\.(weight|bias)",
        r"estimator\.content_mask_embedder\.weight",
        r"estimator\.transformer\.layers\.\d+\.(attention_norm|ffn_norm)\.project_layer\.(weight|bias)",
        r"estimator\.transformer\.layers\.\d+\.skip_in_linear\.(weight|bias)",
        r"estimator\.input_pos",
    ),
    "campplus": (),
    "hift": (),
}
"""Per component: checkpoint keys (regexes) the forward pass never uses (oracle README 3.4–3.6). They are dropped
when the module has no parameter of that name, and listed in the log; any other unexpected key is an error."""

WAV2VEC2_PRETRAINING_KEYS = (r"quantizer\..*", r"project_q\..*", r"project_hid\..*", r"lm_head\..*",
                             r"dropout_features.*")
"""Keys of the hub's pre-training model that are not part of the encoder (dropped and logged)."""


class WeightsError(RuntimeError):
    """A checkpoint cannot be read or does not fit fastvc's modules; the message lists what is wrong."""


class MissingWeightsError(WeightsError):
    """Weight files are neither given locally nor cached, and could not be downloaded.

    `missing` names each file (`repo/filename` or the local path with its config key).
    """

    def __init__(self, missing: list[str], reasons: list[str] | None = None) -> None:
        self.missing = list(missing)
        self.reasons = list(reasons or [])
        lines = ["model weights are missing: " + ", ".join(self.missing),
                 "fetch them with `fastvc download` (needs network access to the Hugging Face hub, "
                 "or set HF_ENDPOINT), or point [model] *_path options at local copies"]
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------
# Where the files are


@dataclass(frozen=True)
class WeightSource:
    """One file of the model: a hub `repo_id`/`filename`, or `local_path` (which wins when set).

    `config_key` names the [model] option that overrides it, for messages.
    """

    name: str
    repo_id: str
    filename: str
    local_path: str = ""
    config_key: str = ""

    def describe(self) -> str:
        if self.local_path:
            return f"{self.local_path} ([model] {self.config_key})"
        return f"{self.repo_id}/{self.filename}"


@dataclass(frozen=True)
class WeightFiles:
    """Local paths of every file the real model needs. `wav2vec2_dir` holds config.json and the weights."""

    dit_checkpoint: Path
    dit_config: Path
    wav2vec2_dir: Path
    campplus: Path
    hift: Path


def weight_sources(model_config: Any) -> list[WeightSource]:
    """The files named by a `fastvc.config.ModelConfig`, in download order (small files first)."""
    mc = model_config
    w2v_override = mc.wav2vec2_path
    sources = [
        WeightSource("dit_config", mc.dit_repo, mc.dit_config, mc.dit_config_path, "dit_config_path"),
        WeightSource("dit_checkpoint", mc.dit_repo, mc.dit_checkpoint, mc.dit_checkpoint_path, "dit_checkpoint_path"),
        WeightSource("campplus", mc.campplus_repo, mc.campplus_file, mc.campplus_path, "campplus_path"),
        WeightSource("hift", mc.hift_repo, mc.hift_file, mc.hift_path, "hift_path"),
    ]
    for filename in WAV2VEC2_FILES:
        local = str(Path(w2v_override) / filename) if w2v_override else ""
        sources.append(WeightSource(f"wav2vec2:{filename}", mc.wav2vec2_repo, filename, local, "wav2vec2_path"))
    return sources


def resolve_weight_files(model_config: Any, *, download: bool = False) -> WeightFiles:
    """Local paths of every weight file: local overrides, else huggingface_hub's cache (downloading when allowed).

    Raises MissingWeightsError naming every file that is not available. With `download=False` nothing touches
    the network. A local wav2vec2 directory may hold `model.safetensors` instead of `pytorch_model.bin`.
    """
    paths: dict[str, Path] = {}
    missing: list[str] = []
    reasons: list[str] = []
    gave_up_on_hub = False
    for source in weight_sources(model_config):
        path, reason, hub_unreachable = _locate(source, model_config.cache_dir or None, download)
        if hub_unreachable:  # the rest are only looked up in the cache, not retried one by one
            download, gave_up_on_hub = False, True
        elif gave_up_on_hub and path is None and not source.local_path:
            reason = "not in the cache, and the hub could not be reached (see the first file)"
        if path is None:
            if not _has_wav2vec2_alternative(source):
                missing.append(source.describe())
                reasons.append(f"{source.describe()}: {reason}")
            continue
        paths[source.name] = path
    if missing:
        raise MissingWeightsError(missing, reasons)
    return WeightFiles(
        dit_checkpoint=paths["dit_checkpoint"],
        dit_config=paths["dit_config"],
        wav2vec2_dir=paths["wav2vec2:config.json"].parent,
        campplus=paths["campplus"],
        hift=paths["hift"],
    )


def _has_wav2vec2_alternative(source: WeightSource) -> bool:
    """A local wav2vec2 directory may replace pytorch_model.bin by model.safetensors."""
    if source.name != "wav2vec2:pytorch_model.bin" or not source.local_path:
        return False
    return (Path(source.local_path).parent / "model.safetensors").is_file()


def _locate(source: WeightSource, cache_dir: str | None, download: bool) -> tuple[Path | None, str, bool]:
    """(path or None, why not, whether the hub could not be reached)."""
    if source.local_path:
        path = Path(source.local_path).expanduser()
        return (path, "", False) if path.is_file() else (None, "no such file", False)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError

    try:
        found = hf_hub_download(source.repo_id, source.filename, cache_dir=cache_dir, local_files_only=not download)
    except (OSError, EntryNotFoundError, HFValidationError) as error:
        unreachable = download and isinstance(error, LocalEntryNotFoundError)  # no connection, nothing cached
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", unreachable
    return Path(found), "", False


def download_weights(model_config: Any) -> WeightFiles:
    """Fetch every file that is not local or cached yet (huggingface_hub shows progress); returns their paths."""
    files = resolve_weight_files(model_config, download=True)
    log.info("weights.ready", dit=str(files.dit_checkpoint), wav2vec2=str(files.wav2vec2_dir),
             campplus=str(files.campplus), hift=str(files.hift))
    return files


# ---------------------------------------------------------------------------------------------------------------
# Reading the files


@dataclass
class SeedVCCheckpoint:
    """Everything the composed model is built from, in the layout of the oracle's `stream` fixture (3.9).

    configs: per component (`mel`, `fbank`, `campplus`, `wav2vec2`, `length_regulator`, `dit`, `hift`) the
        config dict its constructor takes, under the official field names.
    state_dicts: per component in COMPONENTS, the weights under the module's own key names.
    dropped: per component, keys removed before loading and why (logged by `load_strict`'s callers).
    """

    configs: dict[str, dict[str, Any]]
    state_dicts: dict[str, dict[str, torch.Tensor]]
    dropped: dict[str, list[str]] = field(default_factory=dict)


def read_checkpoint(files: WeightFiles) -> SeedVCCheckpoint:
    """Read every official file into configs and state dicts (CPU tensors). Raises WeightsError."""
    model_params, mel_config = read_dit_yaml(files.dit_config)
    cfm, length_regulator = read_dit_checkpoint(files.dit_checkpoint)
    w2v_config = read_wav2vec2_config(files.wav2vec2_dir, output_layer=_output_layer(model_params))
    w2v_state, w2v_dropped = wav2vec2_state_dict(read_wav2vec2_weights(files.wav2vec2_dir), w2v_config["output_layer"])
    configs = {
        "mel": mel_config,
        "fbank": dict(KALDI_FBANK_CONFIG),
        "campplus": {"feat_dim": 80, "embedding_size": int(model_params.get("style_encoder", {}).get("dim", 192))},
        "wav2vec2": w2v_config,
        "length_regulator": {"length_regulator": length_regulator_config(model_params)},
        "dit": model_params,
        "hift": copy.deepcopy(HIFT_CONFIG),
    }
    configs["hift"]["hift"]["sampling_rate"] = mel_config["sr"]
    state_dicts = {
        "wav2vec2": w2v_state,
        "length_regulator": length_regulator,
        "dit": cfm,
        "campplus": read_state_dict(files.campplus),
        "hift": read_state_dict(files.hift),
    }
    return SeedVCCheckpoint(configs, state_dicts, {"wav2vec2": w2v_dropped})


def torch_load(path: Path) -> Any:
    """`torch.load` on CPU with `weights_only=True`; unreadable files raise WeightsError naming the path."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise WeightsError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove a leading `module.` (left by DataParallel) from every key, as upstream does."""
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict file (`campplus_cn_common.bin`, `hift.pt`)."""
    loaded = torch_load(path)
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path}: expected a plain state dict of tensors")
    return strip_module_prefix(loaded)


def read_dit_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`torch.load(path)['net']`: the `cfm` (DiT, keys `estimator.…`) and `length_regulator` state dicts."""
    loaded = torch_load(path)
    net = loaded.get("net") if isinstance(loaded, Mapping) else None
    if not isinstance(net, Mapping) or not {"cfm", "length_regulator"} <= set(net):
        raise WeightsError(f"{path}: expected a dict with 'net' holding 'cfm' and 'length_regulator' state dicts")
    return strip_module_prefix(net["cfm"]), strip_module_prefix(net["length_regulator"])


def read_dit_yaml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Seed-VC yaml: (`model_params`, mel config for `LogMel`).

    Upstream quirk (oracle README 3.1): a yaml `fmax` other than the string "None" means 8000; "None" means
    no upper limit (sr/2).
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise WeightsError(f"cannot read model config {path}: {error}") from error
    try:
        model_params = dict(data["model_params"])
        preprocess = data["preprocess_params"]
        spect = preprocess["spect_params"]
        sr = int(preprocess["sr"])
        mel = {"sr": sr, "n_fft": int(spect["n_fft"]), "win_length": int(spect["win_length"]),
               "hop_length": int(spect["hop_length"]), "n_mels": int(spect["n_mels"]),
               "fmin": float(spect.get("fmin", 0)),
               "fmax": float(sr / 2) if str(spect.get("fmax", "None")) == "None" else 8000.0}
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"{path}: not a Seed-VC model config ({type(error).__name__}: {error})") from error
    for section in ("DiT", "length_regulator"):
        if not isinstance(model_params.get(section), dict):
            raise WeightsError(f"{path}: model_params.{section} is missing")
    return model_params, mel


def length_regulator_config(model_params: Mapping[str, Any]) -> dict[str, Any]:
    """The yaml's `length_regulator` section as upstream builds it: `n_codebooks` is never passed, so it is 1."""
    config = dict(model_params["length_regulator"])
    config["n_codebooks"] = 1
    return config


def _output_layer(model_params: Mapping[str, Any]) -> int:
    tokenizer = model_params.get("speech_tokenizer") or {}
    return int(tokenizer.get("output_layer", DEFAULT_OUTPUT_LAYER))


def read_wav2vec2_config(directory: Path, *, output_layer: int) -> dict[str, Any]:
    """config.json (+ preprocessor_config.json) of a transformers-format wav2vec2 directory, plus Seed-VC's
    `output_layer` and `feature_extractor` fields (oracle README 3.4)."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"cannot read {Path(directory) / 'config.json'}: {error}") from error
    extractor = dict(FEATURE_EXTRACTOR_DEFAULTS)
    preprocessor = Path(directory) / "preprocessor_config.json"
    if preprocessor.is_file():
        values = json.loads(preprocessor.read_text())
        extractor.update({k: values[k] for k in FEATURE_EXTRACTOR_DEFAULTS if k in values})
    if not extractor["do_normalize"]:
        raise WeightsError(f"{preprocessor}: do_normalize is false; Seed-VC's XLS-R path normalises its input")
    if int(extractor["sampling_rate"]) != CONTENT_RATE_HZ:
        raise WeightsError(f"{preprocessor}: sampling_rate {extractor['sampling_rate']}, expected 16000")
    if not 1 <= output_layer <= int(config.get("num_hidden_layers", output_layer)):
        raise WeightsError(f"output_layer {output_layer} is outside the encoder's {config.get('num_hidden_layers')} layers")
    config["output_layer"] = output_layer
    config["feature_extractor"] = extractor
    return config


def read_wav2vec2_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The state dict of a transformers-format directory: `pytorch_model.bin`, else `model.safetensors`."""
    directory = Path(directory)
    if (directory / "pytorch_model.bin").is_file():
        return dict(torch_load(directory / "pytorch_model.bin"))
    if (directory / "model.safetensors").is_file():
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise WeightsError(f"{directory}/model.safetensors needs the 'safetensors' package") from error
        return load_file(str(directory / "model.safetensors"), device="cpu")
    raise MissingWeightsError([f"{directory}/pytorch_model.bin"])


def wav2vec2_state_dict(raw: Mapping[str, torch.Tensor], output_layer: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Hub wav2vec2 keys -> `Wav2Vec2Model` keys for the first `output_layer` layers; returns (state, dropped).

    The hub file holds `Wav2Vec2ForPreTraining`: its `wav2vec2.` model is renamed (`convert_hub_state_dict`:
    prefix off, positional-conv `weight_g`/`weight_v` -> `parametrizations.weight.original0`/`original1`) and its
    pre-training heads (`quantizer.*`, `project_q.*`, `project_hid.*`) are dropped; any other key outside the
    model fails. Layers `encoder.layers.{i}` with i >= output_layer are dropped (`split_checkpoint`): the
    real-time model cuts the encoder to its first `output_layer` layers.
    """
    from fastvc.model.wav2vec2 import HUB_PREFIX, convert_hub_state_dict, split_checkpoint

    raw = strip_module_prefix(raw)
    ignored: list[str] = []
    if any(key.startswith(HUB_PREFIX) for key in raw):
        raw, ignored = convert_hub_state_dict(raw)
        unknown = [key for key in ignored if not _matches_any(key, WAV2VEC2_PRETRAINING_KEYS)]
        if unknown:
            raise WeightsError(f"wav2vec2 checkpoint: unexpected keys outside the encoder ({_listed(unknown)})")
    state, skipped = split_checkpoint(raw, output_layer)
    return state, ignored + skipped


# ---------------------------------------------------------------------------------------------------------------
# Strict loading


def _matches_any(key: str, patterns: Iterable[str]) -> bool:
    return any(re.fullmatch(pattern, key) for pattern in patterns)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return f"{len(keys)}: {shown}{', …' if len(keys) > MAX_LISTED_KEYS else ''}"


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, component: str,
                unused: Iterable[str] | None = None) -> list[str]:
    """Load `state_dict` into `module` with strict key and shape checks; returns the keys dropped as unused.

    Keys the module does not have are dropped only if they match `unused` (regexes, default
    `DOCUMENTED_UNUSED[component]`); every other problem (missing key, unexpected key, shape mismatch) is
    collected and raised as one WeightsError that lists them all.
    """
    patterns = tuple(DOCUMENTED_UNUSED.get(component, ()) if unused is None else unused)
    expected = module.state_dict()
    provided = dict(state_dict)
    extra = sorted(set(provided) - set(expected))
    dropped = [key for key in extra if _matches_any(key, patterns)]
    unexpected = [key for key in extra if key not in dropped]
    missing = sorted(set(expected) - set(provided))
    wrong_shape = sorted(f"{key} {tuple(provided[key].shape)} != {tuple(expected[key].shape)}"
                         for key in set(expected) & set(provided) if provided[key].shape != expected[key].shape)
    problems = [f"{label} ({_listed(keys)})" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)) if keys]
    if problems:
        raise WeightsError(f"{component} checkpoint does not fit the model: " + "; ".join(problems))
    for key in dropped:
        del provided[key]
    module.load_state_dict(provided, strict=True)
    return dropped
