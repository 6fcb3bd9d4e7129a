"""A thread that keeps something the replica serves in step with where it is decided.

:class:`~oceanml.serving.champions.Champions` follows the registry's ``champion`` alias,
:class:`~oceanml.serving.candidates.Candidates` the open releases in the metadata DB. Each
polls every ``poll_s`` (the guarantee: any backend answers a poll) and sooner when
:meth:`Follower.wake` is called (a Prefect event said something moved).
"""

from __future__ import annotations

import threading


class Follower:
    thread_name = "follower"

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh_all(self) -> None:
        """One round: read where things stand and load or drop what changed."""
        raise NotImplementedError

    def wake(self) -> None:
        """Poll now instead of at the next interval."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh_all()
            self._wake.wait(self.poll_s)
            self._wake.clear()
