"""Where the converter may write, and how it replaces a folder: the only code in weights_convert that deletes.

`check_destination` refuses, before anything is read or written, a destination that is a file or a
symlink; that equals, contains or lies inside a source; that is (or contains) the current or the home
folder; or that is a non-empty folder this tool did not write. `force` replaces only a folder we wrote:
our layout (config.json with a `format_version`) or a diffusers folder carrying `MARKER`, holding nothing
but the files of that layout. Paths are compared resolved (symlinks followed), so no alias slips through.

`replace_folder` puts a finished temporary folder in place: the old folder is renamed aside, the new one
renamed in, and only then is the old one deleted. An interruption (or error) at any point leaves a
loadable checkpoint under the destination name, the old one or the new one:

    before the swap         the temporary folder is removed; the destination is as it was
    old moved aside         the old folder is renamed back; the temporary folder is removed
    new renamed in          the write is done; the old folder is deleted and the interruption dropped
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile

from ..safetensors_io import CONFIG_LIMIT, CheckpointError, current_umask, read_text_bounded

from ..checkpoint import QUANTIZATION_FILE
from ..components import COMPONENTS
from ..lm.config import FORMAT as LM_FORMAT
from .keymaps import DIFFUSERS_FOLDERS

log = logging.getLogger("weights_convert")

# Written at the top of every diffusers folder we produce: diffusers ignores it, and it tells a later
# --force that the folder is ours to replace. (Our own layout is recognised by config.json.)
MARKER = "acestep_core_layout.json"
MARKER_CONTENT = {"layout": "diffusers", "written_by": "python -m weights_convert"}

# Everything a folder of each layout holds at its top level.
OURS_ENTRIES = frozenset({"config.json", "tokenizer.json", "silence_latent.safetensors", QUANTIZATION_FILE,
                          *(name + ".safetensors" for name in COMPONENTS)})
LM_ENTRIES = frozenset({"config.json", "lm.safetensors", "tokenizer.json"})
DIFFUSERS_ENTRIES = frozenset({"model_index.json", MARKER, "tokenizer", "scheduler",
                               *(folder for folder, _ in DIFFUSERS_FOLDERS.values())})


class DestinationError(CheckpointError):
    """A destination the converter refuses to write to (the CLI exits with status 2; nothing was touched)."""


def _inside(path: str, folder: str) -> bool:
    """Is `path` strictly inside `folder` (both resolved)?"""
    return path != folder and os.path.commonpath([path, folder]) == folder


def _read_json(path: str) -> dict | None:
    try:
        data = json.loads(read_text_bounded(path, CONFIG_LIMIT, "config file"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def written_by_us(folder: str) -> str | None:
    """"ours" / "lm" / "diffusers" when `folder` is a checkpoint this tool wrote, holding nothing else; else None."""
    entries = set(os.listdir(folder))
    marker = _read_json(os.path.join(folder, MARKER)) if MARKER in entries else None
    config = _read_json(os.path.join(folder, "config.json")) if "config.json" in entries else None
    if marker is not None and marker.get("written_by") == MARKER_CONTENT["written_by"]:
        layout, expected = "diffusers", DIFFUSERS_ENTRIES
    elif config is not None and config.get("format") == LM_FORMAT:
        layout, expected = "lm", LM_ENTRIES
    elif config is not None and "format_version" in config:
        layout, expected = "ours", OURS_ENTRIES
    else:
        return None
    return layout if entries <= expected else None


def check_destination(dst: str | os.PathLike, *, force: bool, sources=()) -> str:
    """-> dst as an absolute path, or a one-line CheckpointError (DestinationError when refused outright).

    sources: the files and folders being read (the SRC argument, the folders a conversion read).
    """
    dst = os.path.abspath(os.fspath(dst))
    if os.path.islink(dst):
        raise DestinationError(f"{dst}: is a symbolic link; give the folder itself (nothing is written "
                               "through a link)")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise DestinationError(f"{dst}: is a file, not a folder; refusing to replace it")
    real = os.path.realpath(dst)
    for name, place in (("current", os.getcwd()), ("home", os.path.expanduser("~"))):
        place = os.path.realpath(place)
        if real == place or _inside(place, real):
            raise DestinationError(f"{dst}: is {'' if real == place else 'above '}the {name} folder; "
                                   "refusing to write there")
    for source in sources:
        src = os.path.realpath(os.fspath(source))
        if real == src:
            raise DestinationError(f"{dst}: is the source {source}; write to a new folder")
        if _inside(src, real):
            raise DestinationError(f"{dst}: contains the source {source}; write to a new folder")
        if _inside(real, src):
            raise DestinationError(f"{dst}: lies inside the source {source}; write elsewhere")
    if os.path.isdir(dst):
        if not force:
            raise CheckpointError(f"{dst}: already exists (use --force to replace it)")
        if os.listdir(dst) and written_by_us(dst) is None:
            raise DestinationError(f"{dst}: is a folder this tool did not write (or holds other files); "
                                   "--force only replaces a checkpoint written by weights_convert")
    return dst


def make_temp_folder(dst: str) -> str:
    """A new hidden folder beside dst, with the permissions a plain mkdir would give (mkdtemp gives 0700)."""
    parent, name = os.path.split(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name[:100]}.", dir=parent)
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def replace_folder(tmp: str, dst: str) -> None:
    """Rename the finished folder `tmp` to `dst`, replacing a folder there (see the module docstring).

    Raises KeyboardInterrupt / the error unchanged when the old folder was kept, and a CheckpointError
    saying where both folders are in the one case it cannot put either back (a failed rename back).
    """
    aside = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)[:100]}.old-{secrets.token_hex(4)}")
    try:
        if os.path.lexists(dst):
            os.rename(dst, aside)
        os.rename(tmp, dst)
    except BaseException:
        # What happened is read from the disk, not from how far the code got: a signal can arrive between
        # a rename and the next line.
        if os.path.lexists(tmp):  # the new folder is not in place: put the old one back
            if not os.path.lexists(dst) and os.path.lexists(aside):
                try:
                    os.rename(aside, dst)
                except OSError as e:
                    raise CheckpointError(f"{dst}: interrupted while replacing it and could not move the old "
                                          f"checkpoint back ({e.strerror}): the old one is at {aside}, the new "
                                          f"one at {tmp}") from None
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # The new folder is in place: the write is done, and a late interruption must not undo that.
        log.warning("%s: interrupted after the new checkpoint was in place; keeping it", dst)
    _remove_old(aside)


def _remove_old(aside: str) -> None:
    """Delete the replaced folder; the new one is in place whatever happens here."""
    if not os.path.lexists(aside):
        return
    try:
        shutil.rmtree(aside)
    except (KeyboardInterrupt, OSError):
        shutil.rmtree(aside, ignore_errors=True)  # finish the job; an interruption here changes nothing
    if os.path.lexists(aside):
        log.warning("could not delete the replaced checkpoint at %s; delete it yourself", aside)
