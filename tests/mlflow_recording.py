"""An MLflow client that notes its writes, to test that a re-run writes nothing."""

from __future__ import annotations

from typing import Any


class Recording:
    """The real client, noting each call that would write to the tracking store or registry."""

    WRITES = ("create_", "set_", "log_", "delete_", "update_", "transition_", "rename_")

    def __init__(self, mlc: Any) -> None:
        self._mlc = mlc
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith(self.WRITES):
            self.writes.append(name)
        return getattr(self._mlc, name)
