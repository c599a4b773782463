"""Your shards read in parallel: split over ranks, then over DataLoader workers, by shard; each
rank draws its B / world_size candidates of every super-batch; exact resume.

    source = ParallelSource(shards, pool_config, transform, tokenize, streams=8, workers=2,
                            rank=ctx.rank, world_size=ctx.world_size)
    mine = source.draw(B)     # this rank's B / world_size candidates (Examples)

Streams. The shards are dealt to S streams (`streams`; default ranks x max(workers, 1)), as
MosaicML streaming's "canonical nodes" do: every epoch the shard order is drawn from (seed,
epoch), the same on every rank (open_clip_train's detshuffle), and stream s reads
order[s::S] (jestkit.data.shards.epoch_shards), each through its own ShardPool: its own shuffle
buffer, generator, bad-sample counters and epochs (a stream that ends its shards starts its next
epoch, reshuffled, on its own). Streams are split over the ranks first, in contiguous blocks
(rank r holds streams r * S/W .. (r + 1) * S/W - 1), then over the rank's DataLoader workers
round-robin (webdataset's order: node first, then worker). Every shard, hence every sample, is
read by exactly one stream, so by one rank and one worker, per epoch.

The super-batch. Each step every stream gives its next c = B / S samples; the super-batch is
the streams' samples in stream order, and rank r's B / W candidates are its block of it. So the
super-batch of every step, and with it the selection, depends on S, the seed and the shards,
not on the number of ranks or workers: a run on 1 rank and on 4 (or with 0, 1 or 2 workers)
draws the same super-batches, given the same S (tests/data/test_parallel.py checks it).

Bad input (before any work): S must be divisible by the world size, each rank needs at least
one stream per worker (S / W >= workers), B must be divisible by S, and there must be at least
S shards: fewer shards than streams is an error naming the numbers (a stream reads whole
shards; splitting a shard between streams would need an index into it). A stream whose shards
hold no good sample in a whole pass, or more bad samples than the pool's threshold, stops the
run; under torchrun the ranks agree after every draw, so every rank stops with that message
(`StreamStopped` on the others) instead of waiting in a collective.

Workers and resume. The loader is torchdata's StatefulDataLoader (persistent workers, prefetch
2, pinned memory when training on a GPU). Each worker yields one chunk per step (the c samples
of each of its streams, decoded, transformed and tokenised) and the rank puts its workers'
chunks in stream order. The loader's state_dict() holds every worker's stream positions
(each stream's ShardPool state: shard and record reached, shuffle buffer, generator, counters);
workers send it every `snapshot_every` steps (the checkpoint interval), and a state taken
between snapshots is restored by replaying the steps since the last one. A checkpoint holds
every rank's loader state; resuming needs the same streams, ranks and workers, and a changed
one is refused with a message naming both (the state is per worker).

Drafted candidates (config.draft_side, jestkit.data.draft). The workers decode each JPEG
candidate at the libjpeg scale its scoring view needs and send its encoded bytes with the
tensors (each chunk's "raw"; None for a candidate decoded in full anyway: not a JPEG, or no
larger than the draft side); the source keeps the last draw's bytes (B / world_size encoded
images; the chunks in flight hold theirs too) and decode_full(rows) decodes the selected rows
again in full, in this process, exactly as draw() gives them without drafting. The stream, its
state and exact resume do not change: the full decode reads only the bytes already drawn.

Data wait. draw() blocks while the workers (or, with none, this process) decode; the loop
measures that time per step (jestkit.engine.loop).
"""

from __future__ import annotations

import ast
import contextlib
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from jestkit.data.shards import ShardPool, ShardPoolConfig, TooManyBadSamples, list_shards
from jestkit.data.source import Examples
from jestkit.dropin.distributed.agree import one_line

FORMAT = "jestkit parallel streams 1"


class StreamStopped(RuntimeError):
    """Another rank's data stream failed; its message says why."""


@dataclass(frozen=True)
class StreamPlan:
    """Which streams each rank and worker reads (see the module docstring); checks the numbers
    at construction."""

    n_shards: int
    streams: int
    world_size: int = 1
    workers: int = 0

    def __post_init__(self):
        S, W, K = self.streams, self.world_size, max(self.workers, 1)
        if self.workers < 0:
            raise ValueError(f"--shards.workers must be >= 0, got {self.workers}")
        if S < 1:
            raise ValueError(f"--shards.streams must be >= 1, got {S}")
        if S % W:
            raise ValueError(
                f"--shards.streams {S} does not split over {W} ranks: use a multiple of {W}"
            )
        if S // W < K:
            raise ValueError(
                f"{W} ranks x {K} workers need at least {W * K} streams, --shards.streams is "
                f"{S}: every worker reads at least one stream"
            )
        if self.n_shards < S:
            raise ValueError(
                f"{self.n_shards} shards cannot feed {S} streams ({W} ranks x {K} workers "
                f"by default): each stream reads whole shards. Use fewer ranks or "
                f"--shards.workers, set --shards.streams <= {self.n_shards}, or write the data "
                f"in more, smaller shards"
            )

    def rank_streams(self, rank: int) -> list[int]:
        """The streams rank `rank` reads: a contiguous block."""
        per = self.streams // self.world_size
        return list(range(rank * per, (rank + 1) * per))

    def per_stream(self, super_batch: int) -> int:
        """c = B / S samples from each stream per step."""
        if super_batch % self.streams:
            raise ValueError(
                f"the super-batch B = {super_batch} does not split over {self.streams} streams "
                f"(--shards.streams, default ranks x workers): choose B divisible by "
                f"{self.streams}, or another number of streams"
            )
        return super_batch // self.streams


class StreamChunks(IterableDataset):
    """The DataLoader's dataset: one chunk per step, the next `per_stream` samples of each of
    this worker's streams (all of `streams` without workers). Endless (streams roll over into
    their next epoch). state_dict() / load_state_dict(): each stream's ShardPool state."""

    def __init__(self, shards: list[str], config: ShardPoolConfig, transform, tokenize,
                 streams: list[int], n_streams: int, per_stream: int):  # fmt: skip
        self.shards, self.config = shards, config
        self.transform, self.tokenize = transform, tokenize
        self.streams, self.n_streams, self.per_stream = streams, n_streams, per_stream
        self._states: dict[int, dict] = {}
        self._pools: dict[int, ShardPool] | None = None

    def _mine(self) -> tuple[int, list[int]]:
        info = get_worker_info()
        if info is None:
            return 0, self.streams
        return info.id, self.streams[info.id :: info.num_workers]

    def _open(self) -> dict[int, ShardPool]:
        if self._pools is None:
            self._pools = {}
            for s in self._mine()[1]:
                config = replace(self.config, stream=s, streams=self.n_streams, rank=0,
                                 world_size=1)  # fmt: skip
                pool = ShardPool(self.shards, config, transform=self.transform)
                if s in self._states:
                    pool.load_state_dict(self._states[s])
                self._pools[s] = pool
        return self._pools

    def __iter__(self):
        pools = self._open()
        worker = self._mine()[0]
        threads = self.config.decode_threads
        executor = ThreadPoolExecutor(threads) if threads > 0 else None
        try:
            while True:
                samples, streams = [], []
                for s, pool in pools.items():
                    samples += pool.take(self.per_stream, executor)
                    streams.append(s)
                yield {
                    "streams": streams,
                    "ids": [x["id"] for x in samples],
                    "images": torch.stack([x["image"] for x in samples]),
                    "tokens": self.tokenize([x["caption"] for x in samples]),
                    "epochs": torch.tensor([x["epoch"] for x in samples]),
                    "skipped": {s: dict(p.skipped) for s, p in pools.items()},
                    "worker": worker,
                    **({"raw": [x["raw"] for x in samples]} if self.config.draft_side else {}),
                }
        finally:
            if executor is not None:
                executor.shutdown()

    def state_dict(self) -> dict:
        if self._pools is None:
            return {"streams": dict(self._states)}
        return {"streams": {s: p.state_dict() for s, p in self._pools.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._states = dict(state["streams"])
        self._pools = None


class ParallelSource:
    """A training source (jestkit.data.source) whose draw(B) is this rank's B / world_size
    candidates (`per_rank`), read by its streams in DataLoader workers; see the module docstring.

    shards: a path, pattern or list (jestkit.data.shards.list_shards). config: how each stream's
    ShardPool reads (its stream, streams, rank and world_size are set here). transform: PIL image
    -> the model's input tensor; tokenize: captions -> (n, L) token ids (both run in the workers).
    streams: S (None: world_size x max(workers, 1)). snapshot_every: steps between the workers'
    state snapshots (the checkpoint interval). group: the process group the ranks agree on after
    each draw (None: the default one when torch.distributed is initialised).
    """

    categories: dict[str, tuple[str, ...]] = {}  # no per-example metadata on your own data
    per_rank = True  # draw() gives this rank's share of the super-batch

    def __init__(self, shards, config: ShardPoolConfig, transform: Callable, tokenize: Callable,
                 *, streams: int | None = None, workers: int = 0, rank: int = 0,
                 world_size: int = 1, group: dist.ProcessGroup | None = None,
                 pin_memory: bool = False, snapshot_every: int = 1):  # fmt: skip
        self.shards = list_shards(shards)
        self.config = replace(config, rank=0, world_size=1)
        self.transform, self.tokenize = transform, tokenize
        self.workers, self.rank, self.world_size, self.group = workers, rank, world_size, group
        S = streams if streams is not None else world_size * max(workers, 1)
        self.plan = StreamPlan(len(self.shards), S, world_size, workers)
        self.pin_memory, self.snapshot_every = pin_memory, max(1, snapshot_every)
        self._loader = self._iter = None
        self._size: int | None = None
        self._resume: dict | None = None
        self._skipped: dict[int, dict[str, int]] = {}
        self.last_chunks: list[dict] = []  # the chunks of the last draw (ids, epochs, worker)
        self._raw: list[bytes] = []  # drafted: the image bytes of the last draw's candidates
        self.full_decodes = 0  # drafted: images decoded again in full (decode_full), in total

    # -- drawing --

    def draw(self, size: int, generator: torch.Generator | None = None) -> Examples:
        """This rank's `size` / world_size candidates of the next super-batch of `size`."""
        error = None
        try:
            mine = self._draw(size)
        except (TooManyBadSamples, ValueError, OSError, RuntimeError, KeyError) as e:
            error, mine = self._one_line(_unwrapped(e)), None
        self._agree(error)
        return mine

    def _one_line(self, error: BaseException) -> BaseException:
        """A failure of the DataLoader itself (a worker killed: the out-of-memory killer sends
        SIGKILL) as a one-line StreamStopped; jestkit's own errors as they are."""
        if type(error) is not RuntimeError or "DataLoader" not in str(error):
            return error
        hint = ""
        if "killed by signal" in str(error) or "exited unexpectedly" in str(error):
            hint = (" (a worker was killed: the system may have run out of memory; use fewer "
                    "--shards.workers, a smaller --shards.buffer_size or a smaller super-batch)")
        return StreamStopped(f"the data stream of rank {self.rank} stopped: "
                             f"{one_line(error)}{hint}")  # fmt: skip

    def _draw(self, size: int) -> Examples:
        if self._iter is None:
            self._start(size)
        elif size != self._size:
            raise ValueError(f"this source draws super-batches of {self._size}, not {size}")
        chunks = [next(self._iter) for _ in range(max(self.workers, 1))]
        by_stream = {}
        for chunk in chunks:
            c = len(chunk["ids"]) // len(chunk["streams"])
            for j, s in enumerate(chunk["streams"]):
                by_stream[s] = (chunk, slice(j * c, (j + 1) * c))
            self._skipped.update(chunk["skipped"])
        order = [by_stream[s] for s in sorted(by_stream)]
        self.last_chunks = chunks
        if self.drafted:  # only the last draw's bytes are kept: B / world_size encoded images
            self._raw = [raw for chunk, rows in order for raw in chunk["raw"][rows]]
        return Examples(
            [i for chunk, rows in order for i in chunk["ids"][rows]],
            torch.cat([chunk["images"][rows] for chunk, rows in order]),
            torch.cat([chunk["tokens"][rows] for chunk, rows in order]),
        )

    @property
    def drafted(self) -> bool:
        """Whether draw() gives the candidates drafted (config.draft_side): the selected ones
        are then decoded again in full with decode_full before training."""
        return self.config.draft_side is not None

    def decode_full(self, rows: list[int]) -> tuple[list[int], torch.Tensor]:
        """Of rows `rows` of the last draw (this rank's candidates), those that were drafted
        and their images decoded in full from their bytes, through the transform: exactly the
        tensors draw() gives them without draft_side. The others (not JPEGs, or JPEGs no larger
        than the draft side) were decoded in full already: their tensors are exact as drawn.
        Runs in this process (decode_threads threads): the bytes travelled here with the
        drafted tensors, and only the selected examples are decoded."""
        from jestkit.data.draft import decode_image

        if not self.drafted:
            raise ValueError("decode_full is for a source that drafts (config.draft_side)")
        rows = [i for i in rows if self._raw[i] is not None]
        raws = [self._raw[i] for i in rows]
        decode = lambda raw: decode_image(raw, self.config.mode, self.transform)  # noqa: E731
        threads = min(self.config.decode_threads, len(raws))
        if threads > 1:
            with ThreadPoolExecutor(threads) as executor:
                images = list(executor.map(decode, raws))
        else:
            images = [decode(raw) for raw in raws]
        self.full_decodes += len(images)
        return rows, torch.stack(images) if images else torch.empty(0)

    def check(self, super_batch: int) -> None:
        """Refuse a super-batch B that does not split over the ranks and streams (call before
        any work; draw checks it again)."""
        if super_batch % self.world_size:
            raise ValueError(f"the super-batch B = {super_batch} does not split over "
                             f"{self.world_size} ranks")  # fmt: skip
        self.plan.per_stream(super_batch)

    def _start(self, size: int) -> None:
        from torchdata.stateful_dataloader import StatefulDataLoader

        self.check(size)
        chunks = StreamChunks(self.shards, self.config, self.transform, self.tokenize,
                              self.plan.rank_streams(self.rank), self.plan.streams,
                              self.plan.per_stream(size))  # fmt: skip
        K = self.workers
        with warnings.catch_warnings():  # torchdata 0.11 calls a deprecated torch.set_vital
            warnings.filterwarnings("ignore", "'set_vital' is deprecated")
            self._loader = StatefulDataLoader(
                chunks, batch_size=None, num_workers=K, persistent_workers=K > 0,
                prefetch_factor=2 if K > 0 else None, pin_memory=self.pin_memory,
                snapshot_every_n_steps=self.snapshot_every * max(K, 1),
            )  # fmt: skip
        if self._resume is not None:
            self._loader.load_state_dict(self._resume)
        self._iter, self._size = iter(self._loader), size

    def _agree(self, error: BaseException | None) -> None:
        """Every rank learns whether any rank's draw failed; then all raise, one message."""
        if self.world_size == 1 or not dist.is_initialized():
            if error is not None:
                raise error
            return
        flags = [None] * self.world_size
        dist.all_gather_object(flags, None if error is None else one_line(error),
                               group=self.group)  # fmt: skip
        if any(m is not None and not isinstance(m, str) for m in flags):
            raise StreamStopped(  # another collective answered: the ranks run other steps
                "the ranks are out of step (another rank is in another collective): were they "
                "started with other settings? Start every rank with the same command line")
        failed = [(r, m) for r, m in enumerate(flags) if m is not None]
        if error is not None:
            raise error
        if failed:
            r, message = failed[0]
            raise StreamStopped(f"the data stream of rank {r} failed, stopping every rank: "
                                f"{message}")  # fmt: skip

    # -- state --

    @property
    def skipped(self) -> dict[str, int]:
        """Bad samples skipped so far by this rank's streams (as of the last draw): reason ->
        count. Under torchrun use all_skipped() for every rank's."""
        total: dict[str, int] = {}
        for counts in self._skipped.values():
            for reason, n in counts.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def all_skipped(self) -> dict[str, int]:
        """Every rank's bad samples, summed (a collective under torchrun: call on every rank)."""
        mine = self.skipped
        if self.world_size == 1 or not dist.is_initialized():
            return mine
        every = [None] * self.world_size
        dist.all_gather_object(every, mine, group=self.group)
        total: dict[str, int] = {}
        for counts in every:
            for reason, n in counts.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def _header(self) -> dict:
        c = self.config
        return {"format": FORMAT, "shards": list(self.shards), "seed": c.seed,
                "buffer_size": c.buffer_size, "shuffle_shards": c.shuffle_shards,
                "streams": self.plan.streams, "world_size": self.world_size,
                "workers": self.workers}  # fmt: skip

    def state_dict(self) -> dict:
        """Every rank's loader state (a collective under torchrun: call on every rank)."""
        mine = self._loader.state_dict() if self._loader is not None else self._resume
        ranks = [mine]
        if self.world_size > 1 and dist.is_initialized():
            ranks = [None] * self.world_size
            dist.all_gather_object(ranks, mine, group=self.group)
        return {**self._header(), "ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was taken; refuses a state of other shards, streams, ranks or
        workers, naming what differs."""
        if state.get("format") != FORMAT:
            raise ValueError("this checkpoint's data position was not written by jestkit's "
                             "parallel shard reader (another source or version)")  # fmt: skip
        mine = self._header()
        layout = ("streams", "world_size", "workers")
        if any(state[k] != mine[k] for k in layout):
            raise ValueError(
                f"the checkpoint's data position was saved by {state['world_size']} ranks x "
                f"{state['workers']} workers reading {state['streams']} streams; this run has "
                f"{mine['world_size']} ranks x {mine['workers']} workers and {mine['streams']} "
                f"streams. Resume with the same number of ranks (torchrun --nproc-per-node), "
                f"--shards.workers and --shards.streams: each worker's position is its own"
            )
        for k, v in mine.items():
            if state[k] != v:
                raise ValueError(
                    f"the checkpoint's data position was saved with shards {k} = "
                    f"{str(state[k])[:200]}, this run has {str(v)[:200]}: it would not "
                    f"continue the same stream"
                )
        if self._loader is not None:
            raise RuntimeError("load_state_dict() must come before the first draw()")
        self._resume = state["ranks"][self.rank]

    def close(self) -> None:
        """Stop the workers."""
        self._iter = self._loader = None


def _unwrapped(error: BaseException) -> BaseException:
    """A DataLoader worker's exception as its own type and message (the loader re-raises it
    with the worker's whole traceback in the message)."""
    text = str(error)
    if not text.startswith("Caught "):
        return error
    last = text.rstrip().splitlines()[-1]
    name, _, message = last.partition(": ")
    if isinstance(error, KeyError) and message[:1] in "'\"":  # KeyError's message is quoted
        with contextlib.suppress(ValueError, SyntaxError):
            message = str(ast.literal_eval(message))
    if name.rsplit(".", 1)[-1] == type(error).__name__ and message:
        try:
            return type(error)(message)
        except TypeError:
            return error
    return error


__all__ = ["ParallelSource", "StreamChunks", "StreamPlan", "StreamStopped"]
