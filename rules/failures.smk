"""A failed run ends with one line per failed job, saying why, the servers' last.

Snakemake prints the log of each failed job (show-failed-logs) amid its
report of the group, and a server that could not load its model fails with
its consumers. So when a run fails, each log this run wrote that holds an
error (nahual's own ``nahual COMMAND: error: ...`` line, or a traceback) is
summed up in one line, its cause as the launcher finds it: the last lines of
the output then say what went wrong, e.g. ``nahual: server of step nuclei,
image demo, instance 0 failed: threshold: unknown param ...``.
"""

import re
from pathlib import Path

#: A log that ends a failed job: nahual's own error line, or a Python traceback.
FAILED_LOG = re.compile(r"^(nahual [\w-]+: error: |Traceback \(most recent call last\):)", re.MULTILINE)


def failed_logs():
    """(rule, job, log path, text) of each log this run wrote that holds an error, servers last."""
    found = []
    for path in sorted(Path("logs").glob("*/**/*.log")):
        try:
            if path.stat().st_mtime < STARTED:
                continue
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if FAILED_LOG.search(text):
            rule_name, *job = path.relative_to("logs").with_suffix("").parts
            found.append((rule_name, job, path, text))
    return sorted(found, key=lambda failure: failure[0] == "serve_model")


def describe_job(rule_name, job):
    """Which job failed, in words: ``server of step nuclei, image demo, instance 0``."""
    if rule_name == "serve_model":
        step, image, batch = job
        return f"server of step {step}, image {image}, instance {batch}"
    return f"{rule_name} {'/'.join(job)}"


def report_failures():
    """Log one line per failed job of this run (called by onerror)."""
    from nahual.launcher._cause import cause_line

    for rule_name, job, path, text in failed_logs():
        logger.error(f"nahual: {describe_job(rule_name, job)} failed: {cause_line(text)} (log: {path})")


onerror:
    report_failures()
