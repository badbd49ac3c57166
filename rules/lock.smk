"""Snakemake's lock after a killed run: cleared only where it is known to guard nothing.

A snakemake killed by SIGKILL (OOM, a lost session) leaves its lock in
``.snakemake/locks``, and the next run would stop until ``--unlock``. A lock
is stale only when no job of the run that took it can still be running, which
this host can know only for a local run on this host: its jobs are this host's
processes. So each run records, once it starts its jobs, which executor and
host they use (``.snakemake/nahual-run.json``; the executor plugin is known only
then, not while the Snakefile is parsed), and a later run clears the lock only

- in the main process of a real (not dry) run,
- when this run is local too: Snakemake needs ``--jobs`` for every non-local
  executor and turns a local run's ``--jobs`` into ``--cores``, so a run with
  cores and no jobs is local;
- when the record says the lock's run was local, on this host,
- and when no snakemake process runs in this directory.

Otherwise the lock stays, with a warning saying why: a cluster run's jobs may
still be running on other nodes, and a second run beside them would write the
same outputs.
"""

import json
import os
import socket

#: Where the executor and host of the latest run that started its jobs are recorded.
RUN_RECORD = os.path.join(".snakemake", "nahual-run.json")
LOCKS = os.path.join(".snakemake", "locks")


def record_run():
    """Record this run's executor and host for a later run that finds its lock (called by onstart)."""
    if not workflow.is_main_process:
        return
    record = {"executor": workflow.executor_plugin.name, "local": workflow.local_exec, "host": socket.gethostname()}
    partial = f"{RUN_RECORD}.part"
    with open(partial, "w") as handle:
        json.dump(record, handle)
    os.replace(partial, RUN_RECORD)


def read_run_record():
    """The record of the latest run that started its jobs, or None when there is none (or it is unreadable)."""
    try:
        with open(RUN_RECORD) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def snakemake_running_here():
    """Whether another snakemake process runs in this working directory (Linux /proc; True when unknown)."""
    proc = os.path.join(os.sep, "proc")
    if not os.path.isdir(proc):
        return True
    here, skip = os.path.realpath(os.getcwd()), {os.getpid(), os.getppid()}
    for entry in os.listdir(proc):
        if not entry.isdigit() or int(entry) in skip:
            continue
        try:
            if os.path.realpath(os.readlink(os.path.join(proc, entry, "cwd"))) != here:
                continue
            with open(os.path.join(proc, entry, "cmdline"), "rb") as handle:
                if b"snakemake" in handle.read():
                    return True
        except OSError:
            continue
    return False


def live_lock_reason():
    """Why the lock may still guard running jobs, or None when it is stale."""
    resources = workflow.resource_settings
    if resources.nodes is not None or resources.cores is None:
        return "this run may use a cluster executor (it was given --jobs, or no --cores)"
    record = read_run_record()
    if record is None:
        return f"there is no record ({RUN_RECORD}) of the run that holds it"
    if not record.get("local"):
        return f"the run that holds it used the {record.get('executor')} executor, whose jobs may still run"
    if record.get("host") != socket.gethostname():
        return f"the run that holds it ran on {record.get('host')}, not on this host"
    if snakemake_running_here():
        return "a snakemake process runs in this directory"
    return None


def clear_stale_lock():
    """Remove the lock a killed local snakemake left, so that a rerun needs no ``--unlock``."""
    if not workflow.is_main_process or workflow.output_settings.dryrun:
        return
    if not os.path.isdir(LOCKS) or not os.listdir(LOCKS):
        return
    reason = live_lock_reason()
    if reason is not None:
        logger.warning(
            f"nahual: left the lock in {LOCKS}: {reason}; once no job of that run runs, `snakemake --unlock`"
        )
        return
    for name in os.listdir(LOCKS):
        os.unlink(os.path.join(LOCKS, name))
    logger.warning("nahual: removed the lock left by a snakemake run that was killed")


clear_stale_lock()


onstart:
    record_run()
