"""A folder of images with captions, as a random-access source.

Captions come from one of:
  a JSONL file (`captions`, default `<root>/metadata.jsonl` when it exists, the Hugging Face imagefolder layout):
      one {"<file_field>": path relative to root, "<caption_field>": str} per line; records in line order;
  sidecar files: every image under `root` (recursively, sorted by path) with the text of `<stem>.txt` beside it
      (an image without one gives a record without a caption).
Records are {"image": the file's encoded bytes, "caption": str, "path": path relative to root, "where": the file
(and captions line)}; in sidecar mode, when every image lies in a first-level sub-folder (ImageNet's
`train/<class>/*.JPEG`), also "label" (the index of its folder among the sorted folder names) and "class" (the
folder name), so classification trains from such a folder directly. Images are decoded
by the consumer's preprocessing, so a corrupt file is skipped and counted there (`ImageDecodeError`). A missing or
unreadable file, and a JSONL line that is not an object with a string file field, come back as None (logged with
the file and line, counted by the pipeline as "undecodable").

Several hosts: every file is a shard of its own; host p reads entries p, p + P, ... (`mmjax.data.sharded`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, NamedTuple

from mmjax import configlib
from mmjax.data.sharded import HostStrided, host_share, own_shards
from mmjax.data.sources import DataError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
OPTIONS = ("root", "captions", "file_field", "caption_field", "host_index", "host_count")


class Entry(NamedTuple):
    name: str            # the image path relative to root ("" for a bad captions line)
    caption: str | None  # from the captions file; None: none given there (sidecar mode reads `.txt` later)
    where: str           # the file (and line) for messages
    error: str = ""      # why a captions line is unusable


def sidecar_entries(root: str) -> list[Entry]:
    """Every image under root, sorted; captions are read from the `.txt` sidecars when a record is read."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files
                  if f.lower().endswith(IMAGE_SUFFIXES)]
    return [Entry(path, None, os.path.join(root, path)) for path in sorted(found)]


def jsonl_entries(path: str, file_field: str, caption_field: str) -> list[Entry]:
    """One entry per non-empty line; a bad line becomes an entry without a file (skipped when read)."""
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                item = json.loads(line)
                name = item[file_field]
                if not isinstance(name, str):
                    raise TypeError(f"{file_field!r} is a {type(name).__name__}, not a string")
                caption = item.get(caption_field)
                entries.append(Entry(name, caption if isinstance(caption, str) else None, where))
            except (ValueError, KeyError, TypeError) as e:
                entries.append(Entry("", None, where, f"{type(e).__name__}: {e}"))
    return entries


def class_folders(entries: list[Entry]) -> tuple[str, ...]:
    """The sorted first-level folder names when every image lies in one (ImageNet's `train/<class>/*.JPEG`
    layout), else ()."""
    tops = {e.name.split(os.sep, 1)[0] for e in entries if os.sep in e.name}
    if not entries or any(os.sep not in e.name for e in entries):
        return ()
    return tuple(sorted(tops))


class ImageFolder:
    """Records of (image file, caption) entries under one root; see the module. `classes`: the class folder
    names, in label order (empty without class folders)."""

    def __init__(self, root: str, entries: list[Entry], sidecars: bool, classes: tuple[str, ...] = ()):
        self.root, self.entries, self.sidecars = root, entries, sidecars
        self.classes = classes
        self._label = {name: i for i, name in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        name, caption, where, error = self.entries[index]
        if error:
            log.warning("skipping a bad captions line (%s): %s", where, error)
            return None
        path = os.path.join(self.root, name)
        try:
            with open(path, "rb") as f:
                record: dict[str, Any] = {"image": f.read(), "path": name, "where": where}
            if self.classes:
                folder = name.split(os.sep, 1)[0]
                record["label"], record["class"] = self._label[folder], folder
            if self.sidecars:
                text = os.path.splitext(path)[0] + ".txt"
                if os.path.isfile(text):
                    with open(text, encoding="utf-8") as f:
                        caption = f.read().strip()
        except (OSError, ValueError) as e:  # a missing / unreadable image, a sidecar that is not UTF-8
            log.warning("skipping an image-folder record (%s): %s: %s", where, type(e).__name__, e)
            return None
        if caption is not None:
            record["caption"] = caption
        return record


def from_config(cfg: dict[str, Any]) -> HostStrided:
    """`config.data.<split>` = {name: "imagefolder", root, captions ("": `<root>/metadata.jsonl` if present, else
    `.txt` sidecars), file_field ("file_name"), caption_field ("caption"), host_index, host_count}."""
    configlib.check_known(cfg, OPTIONS, "data.<split> (imagefolder source)")
    root = cfg.get("root") or ""
    if not os.path.isdir(root):
        raise DataError(f"imagefolder root {root!r} is not a directory")
    captions = cfg.get("captions") or ""
    if not captions and os.path.isfile(os.path.join(root, "metadata.jsonl")):
        captions = os.path.join(root, "metadata.jsonl")
    if captions:
        entries = jsonl_entries(captions, cfg.get("file_field", "file_name"), cfg.get("caption_field", "caption"))
    else:
        entries = sidecar_entries(root)
    if not entries:
        raise DataError(f"imagefolder {root!r}: no images ({', '.join(IMAGE_SUFFIXES)})"
                        + (f" listed in {captions}" if captions else ""))
    index, count = host_share(cfg.get("host_index", -1), cfg.get("host_count", -1))
    own = own_shards(entries, index, count, f"imagefolder {root!r}")
    classes = () if captions else class_folders(entries)   # from all entries: every host numbers them alike
    return HostStrided(ImageFolder(root, own, sidecars=not captions, classes=classes), index, count)
