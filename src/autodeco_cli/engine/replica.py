"""A data-parallel replica: the process `DataParallelEngine` spawns for each of its N-1 extra shares.

It opens the engine once, then generates each shard it is sent, reporting finished generations as
they finish. While it works (loading, generating) a thread sends a heartbeat every `beat_s`, so the
lead tells a replica that is slow from one that is stopped (SIGSTOP) or hung. The replica never
prints a traceback of its own: an error is sent to the lead, which decides what the user sees,
and a lead that is gone (killed, its pipe closed) makes the replica exit quietly and at once.

Messages to the lead: ("ready", None), ("alive", None), ("batch", [(position, Generation)...]),
("done", None), ("error", {"traceback": str, "user": one-line str or None}).
Messages from the lead: ("generate", requests, kwargs), ("close", None, None).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import traceback
from typing import Callable

import torch

from ..core.errors import UserError


class _LeadGone(Exception):
    """The pipe to the lead is closed: the lead was killed, or closed it."""


class _Link:
    """The replica's end of the pipe: sends from two threads (work, heartbeat) under one lock."""

    def __init__(self, connection, beat_s: float):
        self.connection = connection
        self.beat_s = beat_s
        self.busy = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._beat, daemon=True).start()

    def send(self, message) -> None:
        try:
            with self._lock:
                self.connection.send(message)
        except (OSError, ValueError):
            raise _LeadGone() from None

    def receive(self):
        try:
            return self.connection.recv()
        except (EOFError, OSError):
            raise _LeadGone() from None

    def _beat(self) -> None:
        while True:
            self.busy.wait()
            try:
                self.send(("alive", None))
            except _LeadGone:
                # no one will read what this process computes: stop now, not at its next batch
                os._exit(0)
            time.sleep(self.beat_s)


def serve(connection, opener: Callable[..., object], open_kwargs: dict, threads: int, beat_s: float) -> None:
    """The replica's main: `opener` is `runtime.open_engine`, passed in so that this module need not
    import the layer that uses it."""
    # Ctrl-C reaches the whole process group; the lead handles it and then stops its replicas
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    link = _Link(connection, beat_s)
    try:
        link.busy.set()
        try:
            engine = opener(**open_kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the lead, which raises it
            link.send(("error", _report(exc)))
            return
        link.send(("ready", None))
        link.busy.clear()
        _serve_calls(link, engine)
    except _LeadGone:
        pass  # nothing to report to, nothing to add: exit quietly


def _serve_calls(link: _Link, engine) -> None:
    while True:
        kind, requests, kwargs = link.receive()
        if kind == "close":
            return
        link.busy.set()
        try:
            # the engine treats keys as opaque: tag each with its position, untag before sending
            tagged = [dataclasses.replace(r, key=(position, r.key)) for position, r in enumerate(requests)]

            def report(batch: list) -> None:
                items = []
                for generation in batch:
                    position, generation.key = generation.key
                    items.append((position, generation))
                link.send(("batch", items))

            engine.generate(tagged, on_batch_done=report, **kwargs)
            link.send(("done", None))
        except _LeadGone:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported to the lead, which raises it
            link.send(("error", _report(exc)))
        finally:
            link.busy.clear()


def _report(exc: BaseException) -> dict:
    return {
        "traceback": traceback.format_exc(),
        "user": exc.one_line() if isinstance(exc, UserError) else None,
    }
