"""Training batches and the fixed validation set, read from the preprocessed cache.

The batch with index ``i`` on rank ``r`` is a pure function of ``(data.seed, i, r)``:
its random draws come from ``np.random.default_rng([seed, r, i])``. With ``W`` loader
workers, worker ``w`` builds indices ``start + w, start + w + W, ...`` and the DataLoader
hands batches out round-robin, so the sequence does not depend on ``W`` and a run
resumed at ``start_index`` sees exactly the batches a run that never stopped would see.

Crops (``segment_length`` samples) are taken inside one item (a file or a piece of a
long file), never across two; items are drawn with probability proportional to their
length; an item shorter than a crop sits at a random offset in a zero-padded crop.
Crops whose clean RMS is below ``data.silence_db`` are redrawn (up to ``MAX_TRIES``
times), except a share ``data.quiet_fraction`` of them, kept so quiet passages are seen.
Each crop pairs the clean audio with one random cached variant (round trip) of its item.
Training batches are then augmented (validation crops are not): a share
``data.identity_fraction`` of crops gets the clean audio as its input (clean input is left
alone), a share is remixed with another crop degraded the same way (``data.remix_fraction``,
see ``remix``), each crop's pair goes through the same random peaking filters (``data.eq_db``, see
``equalise``), is scaled by one gain drawn uniformly in ``data.gain_db`` (level
robustness), and a share ``data.silence_fraction`` of crops becomes digital silence on both
sides (silence stays silent).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import traceback
from pathlib import Path

import numpy as np
import torch
import torchaudio

from gan.config import DataConfig
from gan.data.cache import SCALE, CacheError, CacheSplit, open_cache
from gan.dsp.shifters import SHIFTERS

SHIFTER_LABELS = {name: i + 1 for i, name in enumerate(SHIFTERS)}  # the labels of generators/condition.py

MAX_TRIES = 8  # silence redraws per crop before a quiet crop is accepted
_VAL_TAG = 0x76616C  # "val": keeps validation draws apart from every training batch
STOP_SECONDS = 2.0  # how long a loader worker gets to finish its batch and stop before it is terminated


class CropSampler:
    """Draws (clean, degraded, shift) crops from one cache split with a given numpy Generator."""

    def __init__(self, split: CacheSplit, length: int, silence_db: float, quiet_fraction: float = 0.0):
        if len(split) == 0:
            raise CacheError(f"cache split {split.name!r} is empty; add audio files or change data.val_fraction")
        self.split, self.length, self.quiet_fraction = split, length, quiet_fraction
        self.variants = len(split.degraded)
        self.cum = np.cumsum(split.lengths)  # sampling proportional to item length
        self.min_power = 10.0 ** (silence_db / 10)  # mean square threshold

    def draw(self, rng: np.random.Generator, n: int, items: np.ndarray | None = None,
             variant: np.ndarray | None = None, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """``n`` crops -> clean, degraded ``(n, length)`` float32, shift ``(n,)`` int64, item, variant, start.

        ``variant``: the cached round trip of each crop (default: drawn). ``out`` (optional):
        preallocated clean, degraded and shift arrays to fill.
        """
        free_items = items is None  # fixed items (validation) only get new positions
        if free_items:
            items = self._items(rng, n)
        if variant is None:
            variant = rng.integers(0, self.variants, n)
        keep_quiet = rng.random(n) < self.quiet_fraction if self.quiet_fraction else np.zeros(n, bool)
        starts = self._positions(rng, items)
        out = out or {"clean": np.empty((n, self.length), np.float32),
                      "degraded": np.empty((n, self.length), np.float32), "shift": np.empty(n, np.int64)}
        clean, degraded = out["clean"], out["degraded"]
        power = self._fill(clean, items, starts, None)
        for _ in range(MAX_TRIES):
            quiet = np.flatnonzero((power < self.min_power) & ~keep_quiet)
            if quiet.size == 0:
                break
            if free_items:
                items[quiet] = self._items(rng, quiet.size)
            starts[quiet] = self._positions(rng, items[quiet])
            power[quiet] = self._fill(clean, items, starts, quiet)
        for j in range(n):
            self._copy(degraded[j], self.split.degraded[variant[j]], items[j], starts[j])
        out["shift"][:] = self.split.shifts[items, variant]
        return {**out, "item": items, "variant": variant, "start": starts}

    def _items(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` item indices, drawn with probability proportional to item length."""
        return np.searchsorted(self.cum, rng.random(n) * self.cum[-1], side="right")

    def _positions(self, rng: np.random.Generator, items: np.ndarray) -> np.ndarray:
        """Crop start inside each item; for an item shorter than a crop, ``-start`` is where it sits in the padded crop."""
        span = self.split.lengths[items] - self.length  # (n,)
        pos = np.floor(rng.random(len(items)) * (np.abs(span) + 1)).astype(np.int64)
        return np.where(span >= 0, pos, -pos)

    def _fill(self, out: np.ndarray, items, starts, rows) -> np.ndarray:
        """Copy clean crops into ``out[rows]`` -> their mean square power ``(len(rows),)``."""
        rows = np.arange(len(items)) if rows is None else rows
        power = np.empty(len(rows))
        for k, j in enumerate(rows):
            row = out[j]
            self._copy(row, self.split.clean, items[j], starts[j])
            power[k] = np.dot(row, row) / len(row)
        return power

    def _copy(self, row: np.ndarray, array: np.ndarray, item: int, start: int) -> None:
        """``row[:] = array[item crop] / 32767``, zero-padded where the item is shorter."""
        off, length = self.split.offsets[item], self.split.lengths[item]
        if length >= self.length:  # by length, not by the sign of start: a short item can start at 0
            row[:] = array[off + start: off + start + self.length]  # int16 -> float32
        else:
            row[:] = 0.0
            row[-start: -start + length] = array[off: off + length]
        np.multiply(row, np.float32(1 / SCALE), out=row)  # a cast then a scale: faster than one mixed op


class TrainStream:
    """Training batches of one rank; ``batch(i)`` is a pure function of ``(data.seed, i, rank)``."""

    def __init__(self, cache_dir: str | Path, data_cfg: DataConfig, rank: int = 0):
        self.cache_dir, self.cfg, self.rank = Path(cache_dir), data_cfg, rank
        self._sampler: CropSampler | None = None  # opened lazily, so each worker maps its own memmaps

    @property
    def sampler(self) -> CropSampler:
        if self._sampler is None:
            cache = open_cache(self.cache_dir)
            self._sampler = CropSampler(cache.split("train"), self.cfg.segment_length, self.cfg.silence_db,
                                        self.cfg.quiet_fraction)
        return self._sampler

    def batch(self, index: int, out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """-> clean, degraded ``(B, 1, T)`` float32, shift and family ``(B,)`` int64 (written into ``out`` if given).

        ``family``: the label a conditioned generator is told (``generators/condition.py``): 1 + the round
        trip's shifter's place in ``SHIFTERS``, 0 (unknown) for clean input, remixed crops and a share
        ``data.unknown_fraction`` of crops."""
        cfg = self.cfg
        out = out or {"clean": torch.empty(cfg.batch_size, 1, cfg.segment_length),
                      "degraded": torch.empty(cfg.batch_size, 1, cfg.segment_length),
                      "shift": torch.empty(cfg.batch_size, dtype=torch.int64),
                      "family": torch.empty(cfg.batch_size, dtype=torch.int64)}
        views = {"clean": out["clean"].numpy()[:, 0], "degraded": out["degraded"].numpy()[:, 0],
                 "shift": out["shift"].numpy()}  # (B, 1, T) -> (B, T) views
        rng = np.random.default_rng([cfg.seed, self.rank, index])
        drawn = self.sampler.draw(rng, cfg.batch_size, out=views)
        family = augment(views, rng, cfg, self.sampler.split.shifters[drawn["item"], drawn["variant"]])
        labels = out["family"].numpy()
        labels[:] = [SHIFTER_LABELS.get(name, 0) for name in family]
        if cfg.unknown_fraction:  # drawn last: the audio of a batch does not depend on it
            labels[rng.random(cfg.batch_size) < cfg.unknown_fraction] = 0
        return out

    def __getstate__(self):
        return {**self.__dict__, "_sampler": None}


def augment(crops: dict[str, np.ndarray], rng: np.random.Generator, cfg: DataConfig,
            shifters: np.ndarray | None = None) -> np.ndarray:
    """In place on clean, degraded ``(B, T)`` and shift ``(B,)``: a share of crops gets the clean audio as input
    (shift 0), a share is remixed (``data.remix_fraction``; ``shifters`` ``(B,)``: each crop's shifter), then
    equalisation (``data.eq_db``), one gain per crop from ``data.gain_db``, then silence for a share.
    Returns each crop's shifter ``(B,)`` (object): "clean input" where the input is the clean audio, "remix"
    where two round trips were added."""
    n = len(crops["clean"])
    family = np.full(n, "", dtype=object) if shifters is None else np.asarray(shifters, dtype=object).copy()
    if cfg.identity_fraction:
        same = rng.random(n) < cfg.identity_fraction
        crops["degraded"][same] = crops["clean"][same]
        crops["shift"][same] = 0
        family[same] = "clean input"
    if cfg.remix_fraction:
        family[remix(crops, rng, cfg.remix_fraction, family)] = "remix"  # two shifts at once: no one label
    if cfg.eq_db:
        equalise(crops, rng, cfg.eq_db, cfg.sample_rate)
    lo, hi = cfg.gain_db
    if lo != hi or lo != 0.0:
        gain = (10.0 ** (rng.uniform(lo, hi, n) / 20)).astype(np.float32)[:, None]  # (B, 1)
        crops["clean"] *= gain
        crops["degraded"] *= gain
    if cfg.silence_fraction:
        silent = rng.random(n) < cfg.silence_fraction
        crops["clean"][silent] = 0.0
        crops["degraded"][silent] = 0.0
    return family


REMIX_DB = (-12.0, 0.0)  # level of the added crop relative to its own, uniform in dB


def remix(crops: dict[str, np.ndarray], rng: np.random.Generator, fraction: float, family: np.ndarray) -> np.ndarray:
    """In place on clean, degraded ``(B, T)``: a share ``fraction`` of crops gets another crop of the batch whose
    input went through the same shifter (``family`` ``(B,)``; clean input counts as one) added on both sides,
    at a level uniform in ``REMIX_DB``. The sum of two round trips of one shifter is a new recording degraded
    the same way (remixing, as source-separation training does), so a few recordings give many, and a
    model cannot tell round trips apart by recognising the recordings. A crop without a partner is kept.
    Returns which crops were remixed ``(B,)`` bool."""
    n = len(crops["clean"])
    chosen = rng.random(n) < fraction
    picks = rng.random(n)
    level = (10.0 ** (rng.uniform(*REMIX_DB, n) / 20)).astype(np.float32)
    clean, degraded = crops["clean"].copy(), crops["degraded"].copy()  # partners as drawn, not as remixed
    mixed = np.zeros(n, bool)
    for j in np.flatnonzero(chosen):
        partners = np.flatnonzero((family == family[j]) & (np.arange(n) != j))
        if partners.size:
            k = partners[int(picks[j] * partners.size)]
            crops["clean"][j] += level[j] * clean[k]
            crops["degraded"][j] += level[j] * degraded[k]
            mixed[j] = True
    return mixed


EQ_FILTERS = 3  # peaking filters per crop
EQ_HEADROOM = 1 / 1024  # torchaudio's biquads clamp to [-1, 1]: filter 60 dB down, beyond any boost (<= 36 dB)


def equalise(crops: dict[str, np.ndarray], rng: np.random.Generator, eq_db: float, sample_rate: int) -> None:
    """In place on clean, degraded ``(B, T)``: each crop's clean and degraded audio through the same
    ``EQ_FILTERS`` peaking filters (RBJ cookbook, torchaudio's ``equalizer_biquad``): centres
    log-uniform in 50 Hz .. 16 kHz, gains uniform in +-``eq_db`` dB, Q log-uniform in 0.5 .. 2.

    The target changes with the input, so the pair still says what to restore; what changes is
    the spectrum the model sees, which it could otherwise learn to recognise recording by recording.
    """
    n = len(crops["clean"])
    centre = np.exp(rng.uniform(np.log(50.0), np.log(16000.0), (n, EQ_FILTERS)))
    gain = rng.uniform(-eq_db, eq_db, (n, EQ_FILTERS))
    q = np.exp(rng.uniform(np.log(0.5), np.log(2.0), (n, EQ_FILTERS)))
    for j in range(n):
        pair = torch.from_numpy(np.stack([crops["clean"][j], crops["degraded"][j]])) * EQ_HEADROOM  # (2, T)
        for f in range(EQ_FILTERS):
            pair = torchaudio.functional.equalizer_biquad(pair, sample_rate, float(centre[j, f]), float(gain[j, f]),
                                                          float(q[j, f]))
        pair = (pair / EQ_HEADROOM).numpy()
        crops["clean"][j], crops["degraded"][j] = pair[0], pair[1]


class TrainLoader:
    """Endless iterable of batches ``start_index, start_index + 1, ...`` of one rank.

    With ``num_workers`` > 0, worker processes build batches straight into shared-memory
    slots (worker ``w`` builds every ``w``-th batch) and the main process copies each slot
    out in order, so only a few bytes cross process boundaries per batch. Each ``iter()``
    starts fresh workers; they stop when the iterator is closed or garbage collected.
    """

    def __init__(self, stream: TrainStream, num_workers: int, start_index: int = 0, pin_memory: bool = False,
                 slots_per_worker: int = 3):
        self.stream, self.num_workers, self.start_index = stream, num_workers, start_index
        self.pin_memory, self.slots_per_worker = pin_memory, slots_per_worker

    def __iter__(self):
        if self.num_workers == 0:
            return self._serial()
        return self._parallel()

    def _serial(self):
        index = self.start_index
        while True:
            batch = self.stream.batch(index)
            yield {k: v.pin_memory() for k, v in batch.items()} if self.pin_memory else batch
            index += 1

    def _parallel(self):
        cfg, workers = self.stream.cfg, self.num_workers
        n_slots = workers * self.slots_per_worker  # slot k % n_slots always belongs to worker k % workers
        slots = {"clean": torch.empty(n_slots, cfg.batch_size, 1, cfg.segment_length).share_memory_(),
                 "degraded": torch.empty(n_slots, cfg.batch_size, 1, cfg.segment_length).share_memory_(),
                 "shift": torch.empty(n_slots, cfg.batch_size, dtype=torch.int64).share_memory_(),
                 "family": torch.empty(n_slots, cfg.batch_size, dtype=torch.int64).share_memory_()}
        ctx = mp.get_context("fork")
        tasks = [ctx.Queue() for _ in range(workers)]
        done = ctx.Queue()
        procs = [ctx.Process(target=_worker_loop, args=(self.stream, slots, tasks[w], done, os.getpid()), daemon=True,
                             name=f"unshift-data-{w}") for w in range(workers)]
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # a worker is born with both blocked ...
        try:
            for p in procs:
                p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # ... here a press pending meanwhile arrives
        try:
            for k in range(n_slots):
                tasks[k % workers].put((k, self.start_index + k, k % n_slots))
            ready: dict[int, str | None] = {}
            k = 0
            while True:
                while k not in ready:
                    _receive(done, ready, procs)
                error = ready.pop(k)
                if error is not None:
                    last = error.strip().splitlines()[-1]
                    raise RuntimeError(f"data loader worker failed on batch {self.start_index + k}: {last}\n{error}")
                slot = k % n_slots
                batch = {name: _copy_out(t[slot], self.pin_memory) for name, t in slots.items()}
                tasks[k % workers].put((k + n_slots, self.start_index + k + n_slots, slot))
                yield batch
                k += 1
        finally:
            for q in tasks:
                q.put(None)
            for p in procs:
                p.join(timeout=STOP_SECONDS)
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=STOP_SECONDS)
                if p.is_alive():
                    p.kill()
                    p.join()  # reaped: no zombie processes left behind


def _copy_out(t: torch.Tensor, pin: bool) -> torch.Tensor:
    """Copy a shared slot out (numpy's copy: single-threaded, several times faster than clone here)."""
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
    np.copyto(out.numpy(), t.numpy())
    return out


def _receive(done, ready: dict, procs) -> None:
    """Wait for one finished batch; raise if a worker died instead."""
    while True:
        try:
            k, error = done.get(timeout=5.0)
        except queue.Empty:
            dead = [p for p in procs if not p.is_alive()]
            if dead:
                raise RuntimeError(f"data loader worker {dead[0].name} died (exit code {dead[0].exitcode})") from None
            continue
        ready[k] = error
        return


def _worker_loop(stream: TrainStream, slots: dict[str, torch.Tensor], tasks, done, parent: int) -> None:
    """Build the batches named on ``tasks`` into ``slots`` until told to stop (None) or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a group-wide SIGTERM (preemption): the trainer finishes its step first
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # blocked from the fork until ignored
    torch.set_num_threads(1)
    while True:
        try:
            msg = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the main process is gone (e.g. killed)
                return
            continue
        if msg is None:
            return
        k, index, slot = msg
        try:
            stream.batch(index, out={name: t[slot] for name, t in slots.items()})
            done.put((k, None))
        except Exception:
            done.put((k, traceback.format_exc()))


def make_train_loader(cache_dir: str | Path, data_cfg: DataConfig, rank: int, world_size: int,
                      start_index: int = 0, pin_memory: bool | None = None) -> TrainLoader:
    """Endless loader of batches ``start_index, start_index + 1, ...`` for this rank.

    Each batch: clean, degraded ``(B, 1, T)`` float32 and shift ``(B,)`` int64 with
    ``B = data.batch_size``, ``T = data.segment_length``. Already sharded by rank: do not
    wrap it in a distributed sampler or ``accelerator.prepare``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank}: must be in [0, world_size={world_size})")
    stream = TrainStream(cache_dir, data_cfg, rank)
    _ = stream.sampler  # fail here, in the caller, on a missing or empty cache
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return TrainLoader(stream, data_cfg.num_workers, start_index, pin)


def load_val_set(cache_dir: str | Path, data_cfg: DataConfig) -> dict[str, torch.Tensor]:
    """Fixed validation crops -> clean, degraded ``(N, 1, L)`` float32, shift ``(N,)`` int64.

    ``N = data.val_examples`` crops of ``L = val_segment_seconds * 48000`` samples, cycling
    through the validation items (in a seeded order) and through their variants. ``N = 0``
    when the cache has no validation split.
    """
    cache = open_cache(cache_dir)
    split = cache.split("val")
    n, length = data_cfg.val_examples, int(round(data_cfg.val_segment_seconds * cache.sample_rate))
    if len(split) == 0 or n == 0:
        empty = torch.zeros(0, 1, length)
        return {"clean": empty, "degraded": empty.clone(), "shift": torch.zeros(0, dtype=torch.int64)}
    rng = np.random.default_rng([data_cfg.seed, _VAL_TAG])
    order = rng.permutation(len(split))
    sampler = CropSampler(split, length, data_cfg.silence_db)
    crops = sampler.draw(rng, n, items=order[np.arange(n) % len(split)], variant=np.arange(n) % cache.variants)
    return {"clean": torch.from_numpy(crops["clean"])[:, None],  # (N, L) -> (N, 1, L)
            "degraded": torch.from_numpy(crops["degraded"])[:, None],
            "shift": torch.from_numpy(crops["shift"])}
