"""Convert official or diffusers ACE-Step 1.5 checkpoints into our layout (in memory or on disk).

Our layout, one folder:
    config.json                  format_version + one section per component (acestep_core.config)
    text_encoder.safetensors     Qwen3 encoder
    vae.safetensors              Oobleck VAE, weight norm folded
    dit.safetensors              DiT decoder
    condition.safetensors        condition encoder (+ null_condition_emb)
    audio_tokenizer.safetensors  FSQ tokenizer
    audio_detokenizer.safetensors
    silence_latent.safetensors   key "silence_latent", [1, T, 64] time-major
    tokenizer.json               the Qwen3 tokenizer

Every source key must match exactly one rule of `keymaps.TABLES`, every parameter of our module must be
produced, and every shape must equal what the config implies; anything else is a `ConversionError`
naming the key both as the source file spells it and as we do ("source key X (ours Y)"): the renaming
records where each of our keys came from (`Converted.origins`).

Writing goes through `destination.py`: which folders may be written or replaced, and the atomic swap.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

import torch

from ..checkpoint import Converted, detect_layout, load_tokenizer, read_json, write_ours
from ..components import COMPONENTS, expected_shapes
from ..config import AceStepConfig, load_config
from ..safetensors_io import CheckpointError, read_state_dict
from . import configs, keymaps, transforms
from .destination import check_destination, make_temp_folder, replace_folder
from .keymaps import DIFFUSERS_FOLDERS

log = logging.getLogger("weights_convert")

# The four ACE-Step components share the official model.safetensors.
_OFFICIAL_SHARED = ("dit", "condition", "audio_tokenizer", "audio_detokenizer")


class ConversionError(CheckpointError):
    pass


def _compile(table):
    rules = []
    for src, dst in table:
        if src.startswith("re:"):
            rules.append((re.compile(src[3:]), dst, src))
        else:
            # `{}` is a layer index: digits, carried over to the `{}` of the target.
            pattern = "^" + re.escape(src).replace(r"\{\}", r"(\d+)") + "$"
            target = None if dst is None else dst.replace("{}", r"\1")
            rules.append((re.compile(pattern), target, src))
    return rules


def rename_keys(state_dict: dict, tables: dict[str, list], where: str,
                origins: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Route each key through the rules of `tables` (component -> rules); returns component -> renamed dict.

    origins: filled with component -> {new key: source key}, so later errors can name the source key.
    """
    compiled = {name: _compile(t) for name, t in tables.items()}
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in tables}
    came_from: dict[str, dict[str, str]] = {name: {} for name in tables}
    unmatched, ambiguous = [], []
    for key, tensor in state_dict.items():
        hits = [(name, rx, dst) for name, rules in compiled.items() for rx, dst, _ in rules if rx.match(key)]
        if not hits:
            unmatched.append(key)
            continue
        if len(hits) > 1:
            ambiguous.append(key)
            continue
        name, rx, dst = hits[0]
        if dst is None:
            continue  # dropped on purpose (see the rule's comment in keymaps.py)
        new_key = rx.sub(dst, key)
        # Every element once, at conversion: NaN / inf weights would only show up as all-NaN audio.
        if tensor.is_floating_point() and not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
            raise ConversionError(f"{where}: source key {key!r} (ours {new_key!r}) holds non-finite values "
                                  "(NaN or inf)")
        if new_key in out[name]:
            raise ConversionError(f"{where}: source keys {came_from[name][new_key]!r} and {key!r} both map to "
                                  f"{new_key!r}")
        out[name][new_key] = tensor
        came_from[name][new_key] = key
    if unmatched:
        raise ConversionError(f"{where}: unknown key {unmatched[0]!r}" + (f" (+{len(unmatched) - 1} more)" if len(unmatched) > 1 else ""))
    if ambiguous:
        raise ConversionError(f"{where}: key {ambiguous[0]!r} matches several rules")
    if origins is not None:
        for name, mapping in came_from.items():
            origins.setdefault(name, {}).update(mapping)
    return out


def convert_component(state_dict: dict[str, torch.Tensor], source: str, component: str,
                      where: str = "<state dict>", origins: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Rename (and transform) one component's source tensors into our names.

    source: "official" (for dit/condition/audio_tokenizer/audio_detokenizer, the whole official model.safetensors;
    keys of the other three components are routed away), "diffusers" (that component's own state dict) or
    "transformers" (text encoder only).
    origins: filled with {our key: source key} ("A + B" for a folded weight-norm pair).
    """
    if source not in keymaps.TABLES or component not in keymaps.TABLES[source]:
        raise ValueError(f"no key map for source={source!r}, component={component!r}")
    folded: dict[str, str] = {}
    if component == "vae":
        try:
            state_dict = transforms.fold_all_weight_norms(state_dict, folded)
        except KeyError as e:
            raise ConversionError(f"{where}: {e.args[0]}") from None
    if source == "official" and component in _OFFICIAL_SHARED:
        tables = {name: keymaps.TABLES["official"][name] for name in _OFFICIAL_SHARED}
    else:
        tables = {component: keymaps.TABLES[source][component]}
    came_from: dict[str, dict[str, str]] = {}
    out = rename_keys(state_dict, tables, where, came_from)[component]
    if origins is not None:
        origins.update({ours: folded.get(src, src) for ours, src in came_from[component].items()})
    return out


def source_key(component: str, key: str, origins: dict[str, str] | None, source: str | None) -> str:
    """How the error messages name our `key`: "source key X (ours Y)" when the source name is known."""
    src = (origins or {}).get(key)
    if src is None and source in keymaps.TABLES and component in keymaps.TABLES[source]:
        # A key the source lacks: spell the name it would have had, by the inverse rules.
        for rx, dst, _ in _compile(keymaps.invert_table(keymaps.TABLES[source][component])):
            if rx.match(key):
                src = rx.sub(dst, key)
                break
    return f"key {key!r}" if src is None or src == key else f"source key {src!r} (ours {key!r})"


def check_against_config(tensors: dict[str, torch.Tensor], component: str, config: AceStepConfig, where: str,
                         origins: dict[str, str] | None = None, source: str | None = None) -> None:
    """Every parameter our module has is present, real floating point, with the shape the config implies,
    and nothing else. origins / source (see `source_key`) let each message name the source key too."""
    def name(key):
        return source_key(component, key, origins, source)

    expected = expected_shapes(component, config)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise ConversionError(f"{where}: missing {name(missing[0])} for {component}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        raise ConversionError(f"{where}: unexpected {name(extra[0])} for {component}")
    for key, shape in expected.items():
        tensor = tensors[key]
        if tensor.is_complex() or not tensor.is_floating_point():
            raise ConversionError(f"{where}: {component} {name(key)} has dtype {tensor.dtype}; weights must be "
                                  "real floating point")
        if tuple(tensor.shape) != shape:
            raise ConversionError(f"{where}: {component} {name(key)} has shape {tuple(tensor.shape)}, "
                                  f"the config implies {shape}")


# --- whole checkpoints -------------------------------------------------------------------------------------

def _padding_side(tokenizer_json: str) -> str:
    """The padding side of tokenizer_config.json beside tokenizer.json (transformers' default: right)."""
    path = os.path.join(os.path.dirname(tokenizer_json), "tokenizer_config.json")
    if not os.path.isfile(path):
        return "right"
    side = read_json(path).get("padding_side", "right")
    if side not in ("left", "right"):
        raise CheckpointError(f"{path}: padding_side must be 'left' or 'right', got {side!r}")
    return side


def _pad_id(tokenizer_json: str) -> int:
    tok = load_tokenizer(tokenizer_json)
    pad = tok.token_to_id("<|endoftext|>")
    if pad is None:
        raise CheckpointError(f"{tokenizer_json}: the tokenizer has no <|endoftext|> pad token")
    return pad


def _official_folders(model_dir: str) -> tuple[str, str]:
    """-> (vae/, Qwen3-Embedding-0.6B/): the official layout keeps them beside the model folder."""
    parent = os.path.dirname(model_dir)
    vae_dir, text_dir = os.path.join(parent, "vae"), os.path.join(parent, "Qwen3-Embedding-0.6B")
    for d in (vae_dir, text_dir):
        if not os.path.isdir(d):
            raise CheckpointError(f"{d}: missing; the official layout keeps vae/ and Qwen3-Embedding-0.6B/ beside {os.path.basename(model_dir)}/")
    return vae_dir, text_dir


def _official_config(model_dir: str) -> tuple[AceStepConfig, str]:
    """The official model folder's configs -> (our config, the tokenizer.json path)."""
    vae_dir, text_dir = _official_folders(model_dir)
    dit_c, cond_c, tok_c, version = configs.acestep_from_official(read_json(os.path.join(model_dir, "config.json")),
                                                                 os.path.join(model_dir, "config.json"))
    text_c = configs.qwen3_from_transformers(read_json(os.path.join(text_dir, "config.json")),
                                             os.path.join(text_dir, "config.json"))
    vae_c = configs.oobleck_from_diffusers(read_json(os.path.join(vae_dir, "config.json")),
                                           os.path.join(vae_dir, "config.json"))
    tokenizer_json = os.path.join(text_dir, "tokenizer.json")
    pipe = configs.pipeline_config(version, _pad_id(tokenizer_json), _padding_side(tokenizer_json))
    return configs.assemble(text_c, vae_c, dit_c, cond_c, tok_c, pipe), tokenizer_json


def _diffusers_config(root: str) -> tuple[AceStepConfig, str]:
    """A diffusers pipeline folder's configs -> (our config, the tokenizer.json path)."""
    def cfg(folder):
        return read_json(os.path.join(root, folder, "config.json"))

    dit_c, cond_c, tok_c, version = configs.acestep_from_diffusers(
        cfg("transformer"), cfg("condition_encoder"), cfg("audio_tokenizer"), cfg("audio_token_detokenizer"), root)
    text_c = configs.qwen3_from_transformers(cfg("text_encoder"), os.path.join(root, "text_encoder", "config.json"))
    vae_c = configs.oobleck_from_diffusers(cfg("vae"), os.path.join(root, "vae", "config.json"))
    tokenizer_json = os.path.join(root, "tokenizer", "tokenizer.json")
    pipe = configs.pipeline_config(version, _pad_id(tokenizer_json), _padding_side(tokenizer_json))
    return configs.assemble(text_c, vae_c, dit_c, cond_c, tok_c, pipe), tokenizer_json


def convert_config(path: str, variant: str | None = None) -> AceStepConfig:
    """Our config of any layout, from its config files alone (no weights are read)."""
    layout, root = detect_layout(path, variant)
    if layout == "ours":
        return load_config(root)
    return (_official_config(root) if layout == "official" else _diffusers_config(root))[0]


def _convert_official(model_dir: str) -> Converted:
    vae_dir, text_dir = _official_folders(model_dir)
    config, tokenizer_json = _official_config(model_dir)

    model_sd = read_state_dict(model_dir, "model")
    where = os.path.join(model_dir, "model.safetensors")
    origins = {name: {} for name in COMPONENTS}
    components = {name: convert_component(model_sd, "official", name, where, origins[name])
                  for name in _OFFICIAL_SHARED}
    components["text_encoder"] = convert_component(read_state_dict(text_dir, "model"), "official", "text_encoder",
                                                   os.path.join(text_dir, "model.safetensors"),
                                                   origins["text_encoder"])
    components["vae"] = convert_component(read_state_dict(vae_dir, "diffusion_pytorch_model"), "official", "vae",
                                          os.path.join(vae_dir, "diffusion_pytorch_model.safetensors"),
                                          origins["vae"])
    silence_path = os.path.join(model_dir, "silence_latent.pt")
    silence = _load_silence_pt(silence_path)
    return Converted(config, components, silence, tokenizer_json, "official", origins,
                     (model_dir, vae_dir, text_dir))


# The released silence_latent.pt ([1, 64, 15000] float32) is 3.8 MB.
SILENCE_PT_LIMIT = 64 << 20


def _load_silence_pt(path: str) -> torch.Tensor:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: file not found")
    if not os.path.isfile(path):  # a device or FIFO behind the name would be read without end
        raise CheckpointError(f"{path}: not a regular file")
    if os.path.getsize(path) > SILENCE_PT_LIMIT:
        raise CheckpointError(f"{path}: {os.path.getsize(path)} bytes, over the {SILENCE_PT_LIMIT >> 20} MiB limit "
                              "for a silence latent")
    try:
        # weights_only=True: a plain tensor file never needs arbitrary unpickling.
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the silence latent ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(tensor, torch.Tensor):
        raise CheckpointError(f"{path}: expected a tensor, found {type(tensor).__name__}")
    try:
        return transforms.silence_latent_from_official(tensor)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _convert_diffusers(root: str) -> Converted:
    config, tokenizer_json = _diffusers_config(root)
    components, silence, origins = {}, None, {name: {} for name in COMPONENTS}
    for name, (folder, stem) in DIFFUSERS_FOLDERS.items():
        sd = read_state_dict(os.path.join(root, folder), stem)
        where = os.path.join(root, folder, stem + ".safetensors")
        if name == "condition":
            if "silence_latent" not in sd:
                raise ConversionError(f"{where}: missing key 'silence_latent'")
            silence = sd["silence_latent"]
        components[name] = convert_component(sd, "diffusers", name, where, origins[name])
    return Converted(config, components, silence, tokenizer_json, "diffusers", origins, (root,))


def convert_checkpoint(path: str, variant: str | None = None) -> Converted:
    """Read an official or diffusers checkpoint and return our config and tensors, fully validated."""
    layout, root = detect_layout(path, variant)
    if layout == "ours":
        raise CheckpointError(f"{root}: already in our layout; nothing to convert")
    conv = _convert_official(root) if layout == "official" else _convert_diffusers(root)
    conv.inputs = (os.path.abspath(os.fspath(path)), *conv.inputs)
    for name in COMPONENTS:
        check_against_config(conv.components[name], name, conv.config, f"{root} ({layout})", conv.origins.get(name),
                             layout)
    if conv.silence_latent.dim() != 3 or conv.silence_latent.shape[-1] != conv.config.dit.latent_dim:
        raise ConversionError(f"{root}: silence latent has shape {tuple(conv.silence_latent.shape)}, "
                              f"expected [1, T, {conv.config.dit.latent_dim}]")
    return conv


def write_checkpoint(conv: Converted, dst: str, *, dtype: str | None = None, force: bool = False, progress=None,
                     quantize: str | None = None) -> None:
    """Write `conv` to `dst` atomically: a temporary folder beside dst, swapped in at the very end.

    dst is checked first (`destination.check_destination`): never a source, the current or home folder,
    a file or a link; an existing folder only with force, and only one this tool wrote.
    """
    dst = check_destination(dst, force=force, sources=(*conv.inputs, conv.tokenizer_json))
    tmp = make_temp_folder(dst)
    try:
        write_ours(conv, tmp, dtype=dtype, quantize=quantize, progress=progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, dst)
