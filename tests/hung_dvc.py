"""A ``dvc push`` that hangs, for the tests of what bounds it: a ``sitecustomize`` on
``PYTHONPATH`` that makes the interpreter of ``python -m dvc push [STAGE]`` sleep before DVC
starts, as a push to a remote that stopped answering does. Every other Python process
(DVC's other commands, a stage's build, the branches) starts as usual. Each hung push leaves
a ``push-PID`` file in the folder, so a test counts the attempts and checks none outlives
its timeout."""

from __future__ import annotations

from pathlib import Path

SHIM = '''import os, time
_args = open("/proc/self/cmdline", "rb").read().split(b"\\0")
if b"dvc" in _args and b"push" in _args and ({stage!r} is None or {stage!r} in _args):
    open(os.path.join({folder!r}, "push-%d" % os.getpid()), "w").close()
    time.sleep(3600)
'''


def hang_pushes(folder: Path, stage: str | None = None) -> str:
    """Write the shim into ``folder``; returns the ``PYTHONPATH`` that turns it on."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SHIM.format(
        stage=stage.encode() if stage else None, folder=str(folder)))
    return str(folder)


def hung_pushes(folder: Path) -> list[int]:
    """The process ids of the pushes that hung, in no order."""
    return [int(p.name.removeprefix("push-")) for p in folder.glob("push-*")]

