"""The training cache: its format on disk and its reader (``open_cache``). ``gan.data.preprocess``
builds it; ``gan.data.recipe`` says what goes into it.

Layout of ``data.cache_dir``::

    manifest.json            settings + their hash, files, offsets, lengths, skipped files,
                             and per piece the shift and shifter of each variant
    train/clean.i16          all train pieces back to back, 48 kHz mono int16 (x 1/32767)
    train/variant_0.i16 ...  the same samples after a round trip: variant k of a piece is its
                             round trip by its k-th shift (``data.degrade.variants`` per piece,
                             drawn from ``data.degrade.shifts``; or every shift, in order)
    val/...                  the same for the validation split

Files of any rate and channel count are mixed to mono and resampled to 48 kHz; files
longer than ``PIECE_SECONDS`` are cut into pieces (each piece is an item; crops never
cross items). Every piece is scaled by one gain (<= 1, shared by clean and degraded)
so that no stored sample clips. The train/val split is a hash of the file's relative
path: adding files never moves others between splits. A share ``data.bandlimit_fraction``
of the training pieces is band-limited before the round trip (``bandlimit``), clean
target included, so the model sees audio whose top band is empty and must stay empty.

The cache is written into a hidden sibling folder and renamed into place only when
complete, so a killed run never leaves a folder that looks like a cache.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gan.config import DataConfig, config_hash, to_dict
from gan.errors import UnshiftError

FORMAT = 3  # 3: the torchaudio shifter's vocoder in double precision
SPLITS = ("train", "val")
SCALE = 32767.0


class CacheError(UnshiftError, RuntimeError):
    """A missing, incomplete or stale cache; the message says what to do."""


def array_name(variant: int | None) -> str:
    return "clean.i16" if variant is None else f"variant_{variant}.i16"


def cache_settings(cfg: DataConfig) -> dict:
    """The settings a cache depends on; their hash names a cache's content."""
    return {
        "format": FORMAT,
        "sample_rate": cfg.sample_rate,
        "val_fraction": cfg.val_fraction,
        "min_file_seconds": cfg.min_file_seconds,
        "silence_db": cfg.silence_db,
        "bandlimit_fraction": cfg.bandlimit_fraction,
        "degrade": to_dict(cfg.degrade),
    }


def sources_hash(files: list[Path], root: Path) -> str:
    """Fingerprint of the audio folder: relative paths and sizes."""
    return config_hash([[p.relative_to(root).as_posix(), p.stat().st_size] for p in files])


@dataclass
class CacheSplit:
    """One split: ``clean`` and ``degraded[k]`` (variant k) are ``(N,)`` int16 memmaps (x 1/32767)."""

    name: str
    clean: np.ndarray
    degraded: list[np.ndarray]
    offsets: np.ndarray  # (items,) int64 start of each item in the arrays
    lengths: np.ndarray  # (items,) int64
    shifts: np.ndarray  # (items, variants) int64: the shift of each item's variants
    shifters: np.ndarray  # (items, variants) str: the shifter of each item's variants ("" where the manifest does not say)
    items: list[dict]

    def __len__(self) -> int:
        return len(self.items)


class Cache:
    """A finished cache, opened read-only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            raise CacheError(f"cache {self.path}: no manifest.json (missing or incomplete); "
                             "build it with launch/preprocess.py --config NAME")
        self.manifest = json.loads(mpath.read_text())
        if self.manifest.get("format") != FORMAT:
            raise CacheError(f"cache {self.path}: format {self.manifest.get('format')} is not {FORMAT}; rebuild it")
        self.shifts: list[int] = list(self.manifest["shifts"])  # every shift a variant may have
        self.variants: int = int(self.manifest["variants"])
        self.sample_rate: int = self.manifest["settings"]["sample_rate"]
        self._splits: dict[str, CacheSplit] = {}

    def split(self, name: str) -> CacheSplit:
        if name not in self._splits:
            if name not in self.manifest["splits"]:
                raise CacheError(f"cache {self.path}: no split {name!r}; known: {', '.join(self.manifest['splits'])}")
            meta = self.manifest["splits"][name]
            n = meta["samples"]
            items = meta["items"]
            shifts = np.array([it["shifts"] for it in items], dtype=np.int64).reshape(len(items), self.variants)
            shifters = np.array([[it.get("shifters", {}).get(str(s), "") for s in row] for it, row in zip(items, shifts)],
                                dtype=object).reshape(shifts.shape)
            self._splits[name] = CacheSplit(
                name, self._array(name, None, n), [self._array(name, k, n) for k in range(self.variants)],
                np.array([it["offset"] for it in items], dtype=np.int64),
                np.array([it["length"] for it in items], dtype=np.int64),
                shifts, shifters, items)
        return self._splits[name]

    def _array(self, split: str, variant: int | None, n: int) -> np.ndarray:
        p = self.path / split / array_name(variant)
        if not p.is_file() or p.stat().st_size != 2 * n:
            raise CacheError(f"cache {self.path}: {split}/{p.name} is missing or has the wrong size; rebuild it")
        return np.memmap(p, dtype=np.int16, mode="r", shape=(n,)) if n else np.zeros(0, np.int16)


def split_sizes(manifest: dict) -> str:
    """What each split of a cache holds, as one phrase: ``train 3 files (4.5 s), val 1 file (1.5 s) by
    data.val_fraction 0.25`` (seconds at 48 kHz, after skipped files and silent pieces)."""
    def part(split: str) -> str:
        n = len({item["file"] for item in manifest["splits"][split]["items"]})
        return f"{split} {n} file{'' if n == 1 else 's'} ({manifest['seconds'][split]:.1f} s)"

    return f"{part('train')}, {part('val')} by data.val_fraction {manifest['settings']['val_fraction']:g}"


def open_cache(path: str | Path) -> Cache:
    return Cache(path)
