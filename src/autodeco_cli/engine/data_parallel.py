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
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue
import threading
import traceback
from typing import Callable, Sequence

import torch

from ..core.errors import UserError
from ..core.heads import AutoDecoHeads
from ..core.prompt_format import PromptFormat
from .generation import GenerationEngine
from .models import LoadedModel
from .requests import Generation, Request


class DataParallelEngine:
    """The `Engine` over `lead` (this process) and `size - 1` worker processes."""

    def __init__(self, lead: GenerationEngine, size: int, opener: Callable[..., object], open_kwargs: dict):
        threads = max(1, torch.get_num_threads() // size)
        torch.set_num_threads(threads)
        self.lead = lead
        self.size = size
        context = multiprocessing.get_context("spawn")  # fork after OpenMP started can hang the child
        self._workers = []
        for _ in range(1, size):
            mine, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, opener, open_kwargs, threads), daemon=True)
            process.start()
            theirs.close()
            self._workers.append((process, mine))
        for rank, (process, connection) in enumerate(self._workers, start=1):
            message = _receive(connection, process, rank)
            if message[0] != "ready":
                self.close()
                raise UserError(f"data-parallel replica {rank} did not start: {message[1]}")

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
        kwargs = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop, trace=trace)
        shards = split_by_prompt(requests, self.size)
        if streamer is not None or sum(1 for shard in shards if shard) < 2:
            return self.lead.generate(requests, streamer=streamer, on_batch_done=on_batch_done, **kwargs)
        for (_, connection), shard in zip(self._workers, shards[1:]):
            connection.send(("generate", [requests[i] for i in shard], kwargs))
        finished: queue.Queue = queue.Queue()
        readers = [
            threading.Thread(target=_relay, args=(connection, process, rank, finished), daemon=True)
            for rank, (process, connection) in enumerate(self._workers, start=1)
        ]
        for reader in readers:
            reader.start()
        results: dict[int, object] = {}
        failures: list[str] = []

        def drain() -> None:
            """Hand the workers' finished generations on, here in the calling thread."""
            while True:
                try:
                    rank, kind, payload = finished.get_nowait()
                except queue.Empty:
                    return
                if kind == "error":
                    failures.append(payload)
                    continue
                for position, generation in payload:
                    results[shards[rank][position]] = generation
                if on_batch_done is not None and payload:
                    on_batch_done([generation for _, generation in payload])

        def lead_done(batch: list) -> None:
            drain()
            if on_batch_done is not None:
                on_batch_done(batch)

        lead_results = self.lead.generate([requests[i] for i in shards[0]], on_batch_done=lead_done, **kwargs)
        for index, generation in zip(shards[0], lead_results):
            results[index] = generation
        for reader in readers:
            reader.join()
        drain()
        if failures:
            raise RuntimeError("a data-parallel replica failed:\n" + failures[0])
        missing = [i for i in range(len(requests)) if i not in results]
        if missing:
            raise RuntimeError(f"data-parallel replicas returned no generation for {len(missing)} requests")
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        for process, connection in self._workers:
            try:
                connection.send(("close", None, None))
            except (OSError, BrokenPipeError):
                pass
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        self._workers = []
        self.lead.close()


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


def _receive(connection, process, rank: int):
    try:
        return connection.recv()
    except (EOFError, OSError):
        return ("error", f"replica {rank} exited (code {process.exitcode})")


def _relay(connection, process, rank: int, finished: queue.Queue) -> None:
    """Move a worker's messages into `finished` until its call ends (so its pipe never fills)."""
    while True:
        kind, payload = _receive(connection, process, rank)
        if kind == "done":
            return
        finished.put((rank, kind, payload))
        if kind == "error":
            return


def _serve(connection, opener: Callable[..., object], open_kwargs: dict, threads: int) -> None:
    """A worker replica: open the engine once (`opener` is `runtime.open_engine`, passed in so that
    this module need not import the layer that uses it), then generate each shard it is sent."""
    torch.set_num_threads(threads)
    try:
        engine = opener(**open_kwargs)
    except BaseException:  # noqa: BLE001 - reported to the lead, which raises it
        connection.send(("error", traceback.format_exc()))
        return
    connection.send(("ready", None))
    while True:
        kind, requests, kwargs = connection.recv()
        if kind == "close":
            return
        try:
            # the engine treats keys as opaque: tag each with its position, untag before sending
            tagged = [dataclasses.replace(r, key=(position, r.key)) for position, r in enumerate(requests)]

            def report(batch: list) -> None:
                items = []
                for generation in batch:
                    position, generation.key = generation.key
                    items.append((position, generation))
                connection.send(("batch", items))

            engine.generate(tagged, on_batch_done=report, **kwargs)
            connection.send(("done", None))
        except BaseException:  # noqa: BLE001 - reported to the lead, which raises it
            connection.send(("error", traceback.format_exc()))
