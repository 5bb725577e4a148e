"""One writer per workdir: an exclusive lease file ``<workdir>/.lock-<role>``.

Why: the store writer and the trainer are safe against a kill (rerun and they resume), not against
a second process writing the same files at the same time. Two ``generate_activations.py`` or two
``train.py`` runs on one workdir (a command pasted twice, a scheduler retrying a job that is
still running) would both resume from the same position and overwrite each other's shards,
checkpoints and metrics without either noticing. So the second run must refuse to start and say
who holds the workdir.

Why a file created with ``O_CREAT | O_EXCL`` and not ``flock``: the exclusive create is atomic on
local disks and on NFS, which multi-host runs share, where advisory locks are unreliable; and the
file names its holder (host, pid, start time, command), which is what a person needs to decide.

What happens to a lease whose run died: a killed run cannot release its lease, and "kill it and
rerun the same command" must keep working. Whether the holder is alive can only be asked on its
own host (``os.kill(pid, 0)``), so a lease taken on *this* host whose pid is no longer running is
taken over, with a message naming the dead holder (a reused pid only ever makes a dead holder look
alive, never the reverse, so a live run is never displaced). A lease from *another* host (a
re-queued multi-host job, a shared filesystem) cannot be judged from here: the run refuses, names
the holder, and the person who knows reruns with ``--force_unlock`` (``force=True``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone

ROLES = ("generate", "train")
FIELDS = ("host", "pid", "started", "argv")


class LeaseHeldError(RuntimeError):
    """Another run holds (or held) this workdir's lease; the message names it and what to do."""


@dataclasses.dataclass(frozen=True)
class Lease:
    """A held lease: where its file is and what this process wrote in it (its identity)."""

    path: str
    host: str
    pid: int
    started: str
    argv: tuple[str, ...]

    def release(self) -> bool:
        """Removes the lease file if it is still ours; True if it removed it.

        Why the check: after ``--force_unlock`` another run may own the file now, and removing its
        lease would let a third run in beside it.
        """
        try:
            holder = read_holder(self.path)
        except (FileNotFoundError, LeaseHeldError):
            return False
        if (holder.get("host"), holder.get("pid"), holder.get("started")) != (self.host, self.pid, self.started):
            return False
        os.remove(self.path)
        return True

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_path(workdir: str, role: str) -> str:
    """``<workdir>/.lock-<role>``: one lease per role, so generating a store and training from it
    (different writers of different files) may share a workdir."""
    if role not in ROLES:
        raise ValueError(f"lease role {role!r}: expected one of {ROLES}")
    return os.path.join(workdir, f".lock-{role}")


def read_holder(path: str, retries: int = 10) -> dict:
    """The holder record in ``path``; raises ``LeaseHeldError`` naming the file when it is malformed.

    An empty or partial file is read again for up to a second: a holder writes its record right
    after creating the file, so a reader can catch it in between.
    """
    for attempt in range(retries + 1):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        try:
            holder = json.loads(text)
            if isinstance(holder, dict) and all(k in holder for k in FIELDS) and isinstance(holder["pid"], int):
                return holder
            problem = f"expected a JSON object with {', '.join(FIELDS)}"
        except json.JSONDecodeError as e:
            problem = f"not JSON ({e})"
        if attempt < retries:
            time.sleep(0.1)
    raise LeaseHeldError(
        f"lock file {path} is malformed: {problem}; content {text[:200]!r}. If no other run uses this "
        f"workdir, rerun with --force_unlock to remove it."
    )


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists on this host (a pid owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but is not ours
        return True
    return True


def liveness(holder: dict, host: str) -> str:
    """What this host can say about the holder: alive, probably stale, or unknowable."""
    if holder["host"] != host:
        return f"it runs on another host ({holder['host']}), so this host cannot tell whether it is still alive"
    if holder["pid"] == os.getpid():
        return "that is this very process (the lease was taken twice)"
    if pid_alive(holder["pid"]):
        return f"pid {holder['pid']} is alive on this host"
    return f"pid {holder['pid']} is not running on this host: the lease is probably stale (its run died)"


def stale_here(holder: dict, host: str) -> bool:
    """Whether ``holder`` provably died: it ran on this host and its pid is gone."""
    return holder["host"] == host and holder["pid"] != os.getpid() and not pid_alive(holder["pid"])


def take_over(path: str, holder: dict, *, log=print) -> None:
    """Moves a dead holder's lease aside (``<path>.stale-<our pid>``, kept for the record) and says so.

    The move is a rename, and the file moved is checked against the holder judged dead: when two
    runs take over at once, the second may have moved the first's fresh lease, which it then puts
    back (and its create fails, naming that live holder)."""
    aside = f"{path}.stale-{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another run moved it first: our create decides
        return
    try:
        moved = read_holder(aside, retries=0)
    except LeaseHeldError:
        moved = None
    if moved != holder:
        try:
            os.link(aside, path)  # put the fresh lease back unless yet another run holds the path
        except FileExistsError:
            pass
        os.remove(aside)
        return
    command = " ".join(holder["argv"]) if isinstance(holder["argv"], list) else str(holder["argv"])
    log(
        f"[lease] taking over {path}: its holder (host {holder['host']}, pid {holder['pid']}, started "
        f"{holder['started']}, command: {command}) is not running on this host; its run died. "
        f"The old lease is kept as {aside}."
    )


def held_message(path: str, role: str, holder: dict, host: str) -> str:
    """The refusal: which file, who holds it, whether it looks alive, and how to proceed."""
    command = " ".join(holder["argv"]) if isinstance(holder["argv"], list) else str(holder["argv"])
    return (
        f"the {role} lease of this workdir is held: lock file {path} was taken by host {holder['host']}, "
        f"pid {holder['pid']}, started {holder['started']} (command: {command}); {liveness(holder, host)}. "
        f"Two {role} runs on one workdir would overwrite each other's files. Wait for that run or stop it; "
        f"if it is known to be dead, rerun with --force_unlock."
    )


def acquire(workdir: str, role: str, force: bool = False, *, log=print) -> Lease:
    """Takes ``<workdir>/.lock-<role>`` for this process; also a context manager that releases it.

    Raises ``LeaseHeldError`` naming the holder when the file exists. ``force=True`` removes an
    existing lease (logging whose it was) and takes it: for a holder known to be dead.
    """
    os.makedirs(workdir, exist_ok=True)
    path = lock_path(workdir, role)
    host = socket.gethostname()
    lease = Lease(
        path=path,
        host=host,
        pid=os.getpid(),
        started=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        argv=tuple(sys.argv),
    )
    if force:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                old = fh.read()
            os.remove(path)
            log(f"[lease] --force_unlock: removed {path}, which held {old.strip()[:500]}")
        except FileNotFoundError:  # no lease (or its holder just released it): nothing to remove
            pass
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = read_holder(path)
            except FileNotFoundError:  # released between our create and our read: say so, do not loop
                raise LeaseHeldError(f"lock file {path} was held a moment ago and just released; rerun") from None
            if attempt or not stale_here(holder, host):
                raise LeaseHeldError(held_message(path, role, holder, host)) from None
            take_over(path, holder, log=log)
    record = {"host": lease.host, "pid": lease.pid, "started": lease.started, "argv": list(lease.argv)}
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return lease
