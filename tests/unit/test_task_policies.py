"""Every Prefect task that does I/O has a timeout, and those that talk to a store retry: a
hung remote or a lock must end a task, not hold a night."""

from __future__ import annotations

import importlib
import pkgutil

from prefect import Task

import tasks


def all_tasks() -> dict[str, Task]:
    found = {}
    for module in pkgutil.iter_modules(tasks.__path__):
        mod = importlib.import_module(f"tasks.{module.name}")
        found |= {f"{module.name}.{name}": obj for name, obj in vars(mod).items()
                  if isinstance(obj, Task) and obj.fn.__module__ == mod.__name__}
    return found


def test_every_task_has_a_timeout_and_a_retry() -> None:
    found = all_tasks()
    assert len(found) >= 15  # the stages and their helpers were all found
    assert {n for n, t in found.items() if not t.timeout_seconds} == set()
    assert {n for n, t in found.items() if t.retries < 1} == set()
