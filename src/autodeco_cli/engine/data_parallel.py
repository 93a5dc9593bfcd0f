"""Our engine on several CPU processes (`--dp N` with `--engine hf` on CPU).

One decode process cannot use a second core well: at 32 rows the matmuls split across threads,
but the rest of a step (Python, ~45 small ops per layer, sampling) runs on one, and at two
threads it is a third of the step. N processes with cores/N threads each do not share that
serial part (measured on 2 cores, chat workload: one process at 2 threads ~420 tok/s, two at
1 thread each 325 + 312 tok/s). This process is replica 0; the other N-1 are spawned once,
load the same model, and each generate call splits the requests among all N by prompt (a
prompt's samples stay together, so they still share its prefill and rows).

Results are the single process's: every request draws from its own seeded generator, so a
sample does not depend on which process or batch it ran in (up to float rounding of another
batch shape, as with any batch). Finished generations reach `on_batch_done` in this process as
they finish, so resumable runs keep every sample.

A replica that dies (a SIGKILL, the OOM killer) or stops answering (SIGSTOP, a hang: no heartbeat
for `heartbeat_s`, AUTODECO_DP_HEARTBEAT_S) fails the call at the lead's next finished batch, or
at once when the lead is waiting, as one line naming the replica; the generations that reached
the lead before are handed to `on_batch_done` first, so a re-run resumes from them. The replica
side is `replica.py`.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from typing import Callable, Sequence

import torch

from ..core.errors import UserError
from ..core.heads import AutoDecoHeads
from ..core.prompt_format import PromptFormat
from .generation import GenerationEngine
from .models import LoadedModel
from .replica import serve
from .requests import Generation, Request

HEARTBEAT_ENV = "AUTODECO_DP_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 60.0
FIRST_WORD_S = 300.0
RESUME_HINT = "the samples finished so far are kept: re-run the same command to resume"


def heartbeat_timeout() -> float:
    """Seconds without a word from a working replica before it counts as stopped (HEARTBEAT_ENV)."""
    text = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not text:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UserError(
            f"{HEARTBEAT_ENV}={text!r} is not a number of seconds", f"set it to, e.g., {DEFAULT_HEARTBEAT_S:g}"
        )
    return value


class _Replica:
    """One spawned replica: its process, its pipe, and whether it owes the lead a "done"."""

    def __init__(self, rank: int, process, connection):
        self.rank, self.process, self.connection = rank, process, connection
        self.busy = False
        self.reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return f"data-parallel replica {self.rank} (pid {self.process.pid})"

    def death(self) -> str:
        """How it ended, once its pipe closed (it may take a moment to be reaped)."""
        self.process.join(timeout=10)
        code = self.process.exitcode
        if code is None:
            return "closed its connection to the lead"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"


class ReplicaLost(Exception):
    """Raised inside the lead's generate loop; becomes the UserError the user sees."""


class DataParallelEngine:
    """The `Engine` over `lead` (this process) and `size - 1` replica processes."""

    def __init__(
        self,
        lead: GenerationEngine,
        size: int,
        opener: Callable[..., object],
        open_kwargs: dict,
        heartbeat_s: float | None = None,
    ):
        self.heartbeat_s = heartbeat_s or heartbeat_timeout()
        threads = max(1, torch.get_num_threads() // size)
        torch.set_num_threads(threads)
        self.lead = lead
        self.size = size
        self._failure: UserError | None = None
        context = multiprocessing.get_context("spawn")  # fork after OpenMP started can hang the child
        self._replicas: list[_Replica] = []
        for rank in range(1, size):
            mine, theirs = context.Pipe()
            # beats often enough that a replica whose lead is gone notices within a second or so
            args = (theirs, opener, open_kwargs, threads, min(self.heartbeat_s / 4, 1.0))
            process = context.Process(target=serve, args=args, daemon=True)
            process.start()
            theirs.close()
            self._replicas.append(_Replica(rank, process, mine))
        for replica in self._replicas:
            self._await_ready(replica)

    def _await_ready(self, replica: _Replica) -> None:
        # the first word comes once the spawned interpreter has imported torch: allow for a busy machine
        wait = max(self.heartbeat_s, FIRST_WORD_S)
        while True:
            kind, payload = _next_message(replica, wait)
            wait = self.heartbeat_s
            if kind == "alive":
                continue
            if kind == "ready":
                return
            self.close()
            if kind == "error":
                why = payload["user"] or payload["traceback"].strip().splitlines()[-1]
                hint = None if payload["user"] else "run without --dp to see the error in full"
            else:
                why = payload or f"it {replica.death()}"
                hint = "re-run; if it recurs, run without --dp"
            raise UserError(f"data-parallel replica {replica.rank} did not start: {why}", hint)

    # every replica loads what the lead loaded, so the lead speaks for them all

    @property
    def name(self) -> str:
        return self.lead.name

    @property
    def dtype(self) -> str:
        return self.lead.dtype

    @property
    def prompt_format(self) -> PromptFormat:
        return self.lead.prompt_format

    @property
    def tokenizer(self):
        return self.lead.tokenizer

    @property
    def lm(self) -> LoadedModel:
        return self.lead.lm

    @property
    def heads(self) -> AutoDecoHeads | None:
        return self.lead.heads

    def generate(
        self,
        requests: Sequence[Request],
        *,
        max_new_tokens: int,
        batch_size: int = 8,
        stop: Sequence[str] | None = None,
        trace: bool = False,
        streamer=None,
        on_batch_done: Callable[[list[Generation]], None] | None = None,
    ) -> list[Generation]:
        """`GenerationEngine.generate`, with the requests split across the replicas."""
        if self._failure is not None:
            raise self._failure
        kwargs = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop, trace=trace)
        shards = split_by_prompt(requests, self.size)
        if streamer is not None or sum(1 for shard in shards if shard) < 2:
            return self.lead.generate(requests, streamer=streamer, on_batch_done=on_batch_done, **kwargs)
        gather = _Gather(self, shards, on_batch_done)
        try:
            for replica, shard in zip(self._replicas, shards[1:]):
                if shard:
                    gather.send(replica, ("generate", [requests[i] for i in shard], kwargs))
            gather.start()
            lead_results = self.lead.generate(
                [requests[i] for i in shards[0]], on_batch_done=gather.lead_done, **kwargs
            )
            gather.wait()
        except ReplicaLost as lost:
            self._failure = UserError(str(lost), _hint(str(lost)))
            self._abandon()
            raise self._failure from None
        except BaseException:
            # a replica still at work would send this call's batches into the next call's replies
            if self._abandon():
                self._failure = UserError("data-parallel replicas were stopped when an earlier call failed")
            raise
        for index, generation in zip(shards[0], lead_results):
            gather.results[index] = generation
        missing = [i for i in range(len(requests)) if i not in gather.results]
        if missing:
            raise RuntimeError(f"data-parallel replicas returned no generation for {len(missing)} requests")
        return [gather.results[i] for i in range(len(requests))]

    def _abandon(self) -> bool:
        """Kill the replicas still at work (their replies would belong to no call); True if any were."""
        busy = [replica for replica in self._replicas if replica.busy]
        for replica in busy:
            replica.process.kill()  # SIGKILL: also ends a stopped (SIGSTOP) process
            replica.process.join(timeout=10)
            if replica.reader is not None:
                replica.reader.join(timeout=10)  # its pipe closed with it: it ends at once
            replica.busy = False
        return bool(busy)

    def close(self) -> None:
        """Stop the replicas: an idle one is asked to, one still at work (or stopped) is killed."""
        self._abandon()
        for replica in self._replicas:
            try:
                if replica.process.is_alive():
                    replica.connection.send(("close", None, None))
            except (OSError, ValueError):
                pass
            replica.process.join(timeout=10)
            if replica.process.is_alive():
                replica.process.kill()
                replica.process.join(timeout=10)
            replica.connection.close()
        self._replicas = []
        self.lead.close()


def _hint(reason: str) -> str:
    if "heartbeat" in reason:
        return (
            f"it is stopped (SIGSTOP, a debugger) or hung; {RESUME_HINT} (on a machine this busy, "
            f"raise {HEARTBEAT_ENV})"
        )
    return f"{RESUME_HINT} (with a smaller --dp, or none, if memory is short)"


class _Gather:
    """One generate call's replies: relays the replicas' messages, hands their batches on in the
    calling thread, and notices a replica that dies or goes silent."""

    def __init__(self, engine: DataParallelEngine, shards: list[list[int]], on_batch_done):
        self.engine, self.shards, self.on_batch_done = engine, shards, on_batch_done
        self.results: dict[int, Generation] = {}
        self.pending: dict[int, _Replica] = {}
        self.replies: queue.Queue = queue.Queue()

    def send(self, replica: _Replica, message) -> None:
        try:
            replica.connection.send(message)
        except (OSError, ValueError):
            raise ReplicaLost(f"{replica.name} {replica.death()}") from None
        replica.busy = True
        self.pending[replica.rank] = replica

    def start(self) -> None:
        for replica in self.pending.values():
            replica.reader = threading.Thread(
                target=_relay, args=(replica, self.replies, self.engine.heartbeat_s), daemon=True
            )
            replica.reader.start()

    def lead_done(self, batch: list[Generation]) -> None:
        """The lead finished `batch`: hand it on, then the replicas' news (a lost one raises)."""
        if self.on_batch_done is not None:
            self.on_batch_done(batch)
        self.drain()
        for replica in list(self.pending.values()):
            if replica.process.exitcode is not None:  # dead, whether or not its reader has seen it yet
                self.fail(replica, f"{replica.name} {replica.death()}")

    def wait(self) -> None:
        """After the lead's own shard: wait for the replicas, handing on each batch as it comes."""
        while self.pending:
            self.drain(block=True)

    def drain(self, block: bool = False) -> None:
        while True:
            try:
                rank, kind, payload = self.replies.get(timeout=1.0) if block else self.replies.get_nowait()
            except queue.Empty:
                return
            block = False
            replica = self.pending.get(rank)
            if kind == "batch":
                self._hand_on(rank, payload)
            elif kind == "done":
                replica.busy = False
                self.pending.pop(rank, None)
            elif kind == "error":
                replica.busy = False
                self.pending.pop(rank, None)
                self._raise_error(replica, payload)
            elif kind == "lost":
                self.fail(replica, f"{replica.name} {payload or replica.death()}")

    def _hand_on(self, rank: int, items: list) -> None:
        for position, generation in items:
            self.results[self.shards[rank][position]] = generation
        if self.on_batch_done is not None and items:
            self.on_batch_done([generation for _, generation in items])

    def fail(self, replica: _Replica, reason: str) -> None:
        """Keep what the lost replica (and the others) sent before it went, then raise."""
        if replica.reader is not None:
            replica.reader.join(timeout=10)  # it reads to the end of a dead replica's pipe, then stops
        while True:
            try:
                rank, kind, payload = self.replies.get_nowait()
            except queue.Empty:
                break
            if kind == "batch":
                self._hand_on(rank, payload)
        if replica.reader is None or not replica.reader.is_alive():
            # a reader that gave up on a silent replica leaves what arrived since in the pipe
            for kind, payload in _available(replica):
                if kind == "batch":
                    self._hand_on(replica.rank, payload)
        raise ReplicaLost(reason)

    def _raise_error(self, replica: _Replica, payload: dict) -> None:
        if payload["user"]:
            raise UserError(payload["user"])
        raise RuntimeError(f"{replica.name} failed:\n{payload['traceback']}")


def _next_message(replica: _Replica, heartbeat_s: float) -> tuple[str, object]:
    """The replica's next message; ("lost", why) when its pipe closes or it is silent too long."""
    try:
        if not replica.connection.poll(heartbeat_s):
            return "lost", f"stopped answering: no heartbeat for {heartbeat_s:g} s"
        return replica.connection.recv()
    except (EOFError, OSError):
        return "lost", None


def _available(replica: _Replica):
    """The messages already in a replica's pipe, without waiting for more."""
    try:
        while replica.connection.poll(0):
            yield replica.connection.recv()
    except (EOFError, OSError):
        return


def _relay(replica: _Replica, replies: queue.Queue, heartbeat_s: float) -> None:
    """Move a replica's messages into `replies` until its call ends (so its pipe never fills)."""
    while True:
        kind, payload = _next_message(replica, heartbeat_s)
        if kind == "alive":
            continue
        replies.put((replica.rank, kind, payload))
        if kind in ("done", "error", "lost"):
            return


def split_by_prompt(requests: Sequence, parts: int) -> list[list[int]]:
    """Request indices in `parts` shards, a prompt's requests together, balanced by how many
    requests and prompt tokens each shard holds (largest prompts first, into the lightest shard)."""
    by_prompt: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
        by_prompt.setdefault(tuple(request.input_ids), []).append(index)
    shards: list[list[int]] = [[] for _ in range(parts)]
    load = [0] * parts
    for prompt, indices in sorted(by_prompt.items(), key=lambda item: -len(item[1]) * (len(item[0]) + 32)):
        lightest = load.index(min(load))
        shards[lightest].extend(indices)
        load[lightest] += len(indices) * (len(prompt) + 32)
    return [sorted(shard) for shard in shards]
