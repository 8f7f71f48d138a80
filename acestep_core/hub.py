"""Checkpoints from the Hugging Face Hub: a repository id -> a local folder `load_checkpoint` reads.

`resolve_checkpoint("owner/name")` (or "owner/name@revision") downloads only the files the loader reads,
into the usual Hub cache (HF_HOME / HF_HUB_CACHE; HF_HUB_OFFLINE=1 uses the cache alone). A string that
names an existing path is returned unchanged, so local folders never touch the network. The optional
`huggingface_hub` package is imported only here, only for a Hub id: `pip install acestep-core[hub]`.

Repositories as published (official README "Model Zoo" and `acestep/model_downloader.py`; diffusers
0.42.1 `pipelines/ace_step/pipeline_ace_step.py` docstring):

    ACE-Step/Ace-Step1.5                 an official checkpoints/ root: acestep-v15-turbo/, vae/,
                                         Qwen3-Embedding-0.6B/ (and an LM we never download)
    ACE-Step/acestep-v15-base, -sft,     one official model folder (config.json, model.safetensors,
      -xl-turbo, -xl-base, -xl-sft, ...  silence_latent.pt); the VAE and text encoder come from the
                                         main repository above, as the official downloader arranges it
    ACE-Step/acestep-v15-xl-turbo-diffusers   a diffusers AceStepPipeline folder
    any repository in our layout         (what `python -m weights_convert` writes)

The layout is found by first downloading only the small config files (a few kB), then the weights of
the one model that will be loaded. A single-model repository is combined with the main repository's
vae/ and Qwen3-Embedding-0.6B/ through a folder of symbolic links (under the acestep-core cache, see
`cache_dir`), shaped like an official checkpoints/ folder.
"""

from __future__ import annotations

import os
import re

from .checkpoint import detect_layout
from .components import COMPONENTS
from .convert.keymaps import DIFFUSERS_FOLDERS
from .safetensors_io import CheckpointError

MAIN_REPO = "ACE-Step/Ace-Step1.5"
SHARED_FOLDERS = (("vae", "diffusion_pytorch_model"), ("Qwen3-Embedding-0.6B", "model"))
_CONFIGS = ["config.json", "model_index.json", "*/config.json"]
# owner/name with the Hub's characters, optionally @revision (a branch, tag or commit).
_REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")


def cache_dir() -> str:
    """acestep-core's own cache: $ACESTEP_CORE_CACHE, else $XDG_CACHE_HOME/acestep-core, else ~/.cache/acestep-core."""
    if os.environ.get("ACESTEP_CORE_CACHE"):
        return os.environ["ACESTEP_CORE_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "acestep-core")


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    """"owner/name" or "owner/name@revision" -> (repo id, revision or None); None when it is not one."""
    m = _REPO_ID.fullmatch(text)
    if m is None or ".." in text or "--" in m["repo"]:
        return None
    return m["repo"], m["revision"]


def _weights(folder: str, stem: str) -> list[str]:
    """Allow-patterns for one model folder: its config and its safetensors weights, single file or shards."""
    prefix = f"{folder}/" if folder else ""
    return [f"{prefix}config.json", f"{prefix}{stem}.safetensors", f"{prefix}{stem}.safetensors.index.json",
            f"{prefix}{stem}-*-of-*.safetensors"]


def _download(repo: str, revision: str | None, patterns: list[str]) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{repo}: no such local path; to download it from the Hugging Face Hub, "
                              "pip install acestep-core[hub]") from None
    try:
        return snapshot_download(repo, revision=revision, allow_patterns=patterns)
    except Exception as e:  # the Hub raises many types (HTTP, offline, gated, not found); one line each
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{repo}: no such local path, and the Hugging Face Hub download failed "
                              f"({type(e).__name__}: {first[:300]})") from None


def _link_checkpoints(model_dir: str, model_name: str, shared_root: str, key: str) -> str:
    """Folder <cache>/hub/<key>/ with links model_name -> model_dir, vae -> ..., Qwen3-Embedding-0.6B -> ..."""
    root = os.path.join(cache_dir(), "hub", key)
    os.makedirs(root, exist_ok=True)
    links = {model_name: model_dir, **{f: os.path.join(shared_root, f) for f, _ in SHARED_FOLDERS}}
    for name, target in links.items():
        link = os.path.join(root, name)
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        tmp = f"{link}.{os.getpid()}.tmp"
        try:
            os.symlink(target, tmp, target_is_directory=True)
            os.replace(tmp, link)  # atomic: a concurrent run sees the old link or the new one
        except OSError as e:
            raise CheckpointError(f"{root}: cannot create the link {name} -> {target} ({e.strerror})") from None
    return root


def resolve_checkpoint(path_or_id: str | os.PathLike, variant: str | None = None) -> str:
    """A local path (returned unchanged), or a Hub repository id downloaded as needed -> local folder.

    variant picks the model of a repository holding several (e.g. "turbo", "base", "xl-turbo"), as
    `load_pipeline(..., variant=)` does for a local checkpoints/ folder.
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or a Hub repository id, got {type(path_or_id).__name__}")
    text = os.fspath(path_or_id)
    parsed = None if os.path.exists(text) else parse_repo_id(text)
    if parsed is None:
        return text  # a local path (or a missing one: the loader then names it)
    repo, revision = parsed

    probe = _download(repo, revision, _CONFIGS)  # config files only: enough to tell the layout
    try:
        layout, root = detect_layout(probe, variant)
    except CheckpointError as e:
        reason = str(e).split(": ", 1)[-1]  # drop the snapshot path: the repository id says more
        if variant and "variant" in reason:
            reason += f"; the official single-model repositories are named ACE-Step/acestep-v15-{variant}"
        raise CheckpointError(f"{repo} (Hugging Face Hub): {reason}") from None
    if layout == "ours":
        _download(repo, revision, ["config.json", "tokenizer.json", "silence_latent.safetensors"]
                  + [c + ".safetensors" for c in COMPONENTS])
        return probe
    if layout == "diffusers":
        patterns = ["model_index.json", "tokenizer/tokenizer.json"]
        for folder, stem in DIFFUSERS_FOLDERS.values():
            patterns += _weights(folder, stem)
        _download(repo, revision, patterns)
        return probe
    # official: root is the chosen model folder, inside the repository (checkpoints/ root) or the repository itself.
    model = os.path.relpath(root, probe)
    if model != ".":
        patterns = _weights(model, "model") + [f"{model}/silence_latent.pt"]
        for folder, stem in SHARED_FOLDERS:
            patterns += _weights(folder, stem) + [f"{folder}/tokenizer.json"]
        _download(repo, revision, patterns)
        return probe
    model_dir = _download(repo, revision, _weights("", "model") + ["silence_latent.pt"])
    patterns = []
    for folder, stem in SHARED_FOLDERS:
        patterns += _weights(folder, stem) + [f"{folder}/tokenizer.json"]
    shared = _download(MAIN_REPO, None, patterns)
    name = repo.split("/")[1]
    if not name.startswith("acestep-v15"):
        name = "acestep-v15-" + name  # the loader finds model folders by this prefix
    key = repo.replace("/", "--") + "--" + os.path.basename(model_dir)
    return _link_checkpoints(model_dir, name, shared, key)
