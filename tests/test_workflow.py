"""The Snakemake workflow, run for real with ``snakemake --cores 2`` in temporary copies of the repository.

- the default config (catalog uv environments) on the demo data: every output
  exists and is valid (OME-Zarr labels, GEFF, AnnData), segmentation and
  tracking are accurate, pictures and the HTML report are made, nothing is
  left running, a second run has nothing to do;
- a run stopped halfway (Ctrl-C, or SIGKILL of snakemake alone) and started
  again resumes without manual cleaning and gives the same outputs;
- a killed run's lock cleared on the rerun, but never where cluster jobs may still run;
- lint, dry runs of both profiles, the schema's streaming defaults, and config
  errors in one line that names the key (the deep chain: test_workflow_deep.py;
  the user's own images and edits: test_workflow_own_data.py; failures:
  test_workflow_failures.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

zarr = pytest.importorskip("zarr")
pytest.importorskip("snakemake")

from conftest import ROOT, object_f1, wait_until  # noqa: E402
from track_scores import metric_results, store_graph  # noqa: E402

from nahual.stream._journal import Journal  # noqa: E402

pytestmark = pytest.mark.slow

#: What a workflow copy needs from the repository.
WORKFLOW_FILES = ("workflow", "rules", "profiles", "config.yaml", "config.deep-models.yaml")
#: Seconds a whole workflow run may take on a loaded 2-core CI machine.
RUN_TIMEOUT = 600
STORE = "resources/demo.zarr"
#: The same chain with every server in this interpreter (faster to start).
CURRENT_ENV = {"models": {name: {"env": "current"} for name in ("threshold", "laptrack", "regionprops")}}


def copy_workflow(dest: Path, overrides: dict | None = None) -> Path:
    """A runnable copy of the workflow; ``overrides`` are merged into config.yaml (one level deep per model)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy(source, dest / name)
    if overrides:
        config = yaml.safe_load((dest / "config.yaml").read_text())
        for key, value in overrides.items():
            if key == "models":
                for model, entry in value.items():
                    config["models"].setdefault(model, {}).update(entry)
            else:
                config[key] = value
        (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def run_snakemake(
    workdir: Path, *args: str, timeout: float = RUN_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir`` (its default profile applies) and return the finished process."""
    return subprocess.run(
        snakemake_cmd(*args),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or snakemake_env(),
        check=False,
    )


#: One job in snakemake's output: ``rule NAME:`` (``localrule``), its wildcards on a later line.
JOB_LINE = re.compile(r"^\s*(?:local)?rule (\w+):$")
WILDCARDS_LINE = re.compile(r"^\s*wildcards: (.+)$")


def jobs_run(output: str) -> set[str]:
    """``RULE WILDCARDS`` of each job a snakemake run planned (``RULE`` alone for jobs without wildcards)."""
    jobs: set[str] = set()
    rule = None
    for line in output.splitlines():
        if match := JOB_LINE.match(line):
            if rule:
                jobs.add(rule)
            rule = match.group(1)
        elif rule and (match := WILDCARDS_LINE.match(line)):
            jobs.add(f"{rule} {match.group(1)}")
            rule = None
    if rule:
        jobs.add(rule)
    return jobs


def snakemake_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NAHUAL_TOKEN", None)
    return env


def processes_in(workdir: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose working directory is ``workdir``."""
    here, found = os.path.realpath(workdir), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.path.realpath(os.readlink(f"/proc/{entry}/cwd"))
            if cwd == here or cwd.startswith(here + os.sep):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry), cmdline.strip()))
        except OSError:
            continue
    return found


def stop_processes_in(workdir: Path) -> list[tuple[int, str]]:
    """SIGKILL, by pid, whatever still runs in ``workdir``; returns what was found."""
    left = processes_in(workdir)
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def leftovers(workdir: Path) -> dict[str, list]:
    """Server files, Snakemake locks and processes a finished run must not leave."""
    servers = workdir / "results" / "servers"
    locks = workdir / ".snakemake" / "locks"
    return {
        "server files": sorted(str(p) for p in servers.rglob("*") if p.is_file()) if servers.exists() else [],
        "locks": sorted(os.listdir(locks)) if locks.exists() else [],
        "processes": processes_in(workdir),
    }


def assert_nothing_left(workdir: Path) -> None:
    with contextlib.suppress(pytest.fail.Exception):  # the assertion names what is still running
        wait_until(lambda: not processes_in(workdir), timeout=30, what=f"processes in {workdir} to exit")
    assert leftovers(workdir) == {"server files": [], "locks": [], "processes": []}


def outputs_of(store: Path) -> dict[str, np.ndarray]:
    """The workflow's outputs in a store, as arrays to compare between runs."""
    from nahual.stream import read_tracks

    group = zarr.open_group(store, mode="r")
    out = {f"labels/{name}": group[f"labels/{name}/0"][...] for name in ("nuclei", "tracks")}
    nodes, edges, _ = read_tracks(store, "tracks")
    order = np.argsort(nodes["id"])
    out.update({f"tracks/{key}": values[order] for key, values in nodes.items()})
    out["tracks/edges"] = np.array(sorted(map(tuple, edges.tolist())))
    import anndata

    table = anndata.io.read_elem(group["tables/features"])
    out["tables/features/X"] = np.asarray(table.X)
    out["tables/features/obs"] = table.obs[["label", "t"]].to_numpy()
    return out


# ---------------------------------------------------------------- the default workflow


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """``snakemake --cores 2`` on the default config (catalog uv environments), in a copy."""
    workdir = copy_workflow(tmp_path_factory.mktemp("default") / "wf")
    try:
        result = run_snakemake(workdir, "--cores", "2")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield workdir
    finally:
        stop_processes_in(workdir)


def test_default_run_leaves_no_server_socket_lock_or_process(default_run):
    assert_nothing_left(default_run)
    logs = sorted((default_run / "logs" / "serve_model").rglob("*.log"))
    assert [p.relative_to(default_run / "logs").as_posix() for p in logs] == [
        "serve_model/features/demo/0.log",
        "serve_model/nuclei/demo/0.log",
        "serve_model/tracks/demo/0.log",
    ]


def test_default_run_servers_ran_in_the_catalog_uv_environments(default_run):
    for model in ("threshold", "laptrack", "regionprops"):
        ready = (default_run / "results" / "envs" / f"{model}.txt").read_text()
        assert f"envs/{model}/.venv/bin/python" in ready, ready


def test_default_run_writes_valid_ome_zarr_labels_geff_and_anndata(default_run):
    import anndata
    import geff
    from ome_zarr_models.v05 import Image, ImageLabel

    store = default_run / STORE
    group = zarr.open_group(store, mode="r")
    image = Image.from_zarr(group)
    assert image.labels is not None
    assert {"nuclei", "tracks", "ground_truth"} <= set(group["labels"].attrs["ome"]["labels"])
    for name in ("nuclei", "tracks"):
        ImageLabel.from_zarr(group[f"labels/{name}"])
        labels = group[f"labels/{name}/0"]
        assert labels.dtype == np.uint32 and labels.shape == (8, 256, 256)
        # the demo image's two levels, picked from level 0
        np.testing.assert_array_equal(group[f"labels/{name}/1"][...], labels[...][:, ::2, ::2])
    geff.validate_structure(str(store / "tracks" / "tracks"))
    table = anndata.io.read_elem(group["tables/features"])
    nuclei = group["labels/nuclei/0"][...]
    assert table.n_obs == sum(len(np.unique(frame)) - 1 for frame in nuclei)
    assert {"label", "t"} <= set(table.obs.columns) and table.n_vars > 0
    for step in ("nuclei", "tracks", "features"):
        assert (default_run / "results" / "demo" / f"{step}.done").exists()


def test_default_run_segments_and_tracks_the_demo_accurately(default_run):
    from traccuracy.matchers import CTCMatcher, IOUMatcher
    from traccuracy.metrics import CTCMetrics, DivisionMetrics

    store = default_run / STORE
    group = zarr.open_group(store, mode="r")
    truth, nuclei = group["labels/ground_truth/0"][...], group["labels/nuclei/0"][...]
    scores = [object_f1(t, p) for t, p in zip(truth, nuclei)]
    assert np.mean(scores) >= 0.9 and min(scores) >= 0.8, scores
    named = metric_results(
        lambda: store_graph(store, "ground_truth"),
        lambda: store_graph(store, "tracks"),
        (CTCMatcher(), [CTCMetrics()]),
        (IOUMatcher(iou_threshold=0.5, one_to_one=True), [DivisionMetrics()]),
    )
    assert named["CTCMetrics"]["TRA"] >= 0.95, named["CTCMetrics"]
    assert named["DivisionMetrics"]["Frame Buffer 0"]["Division F1"] >= 0.5, named["DivisionMetrics"]


def test_default_run_draws_the_report_pictures_and_the_html_report(default_run):
    pictures = default_run / "results" / "demo" / "report"
    for name in ("outlines", "tracks", "summary"):
        data = (pictures / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, name
    result = run_snakemake(default_run, "--report", "report.html", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    html = (default_run / "report.html").read_text(errors="replace")
    assert "outlines.png" in html and "tracks.png" in html and "summary.png" in html


def test_a_second_run_has_nothing_to_do(default_run):
    result = run_snakemake(default_run, "--cores", "2", "-n", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


# ---------------------------------------------------------------- interrupted runs


def start_and_stop_halfway(workdir: Path, stop: signal.Signals, whole_group: bool) -> None:
    """Start ``snakemake --cores 2``, wait for the first recorded block of the segmentation, send ``stop``."""
    blocks = Path(f"{workdir / STORE}.nahual") / "nuclei" / "blocks"  # run state beside the store
    with open(workdir / "first-run.log", "w") as log:
        process = subprocess.Popen(
            snakemake_cmd("--cores", "2"),
            cwd=workdir,
            env=snakemake_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: Journal(str(blocks)).entries(refresh=True) or process.poll() is not None,
            timeout=RUN_TIMEOUT,
            what="the first block of the segmentation",
        )
        assert process.poll() is None, (workdir / "first-run.log").read_text()[-3000:]
        if whole_group:  # Ctrl-C in a terminal: SIGINT to the whole foreground process group
            os.killpg(process.pid, stop)
        else:
            os.kill(process.pid, stop)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert (
        not (workdir / "results" / "demo" / "features.done").exists()
        or not (workdir / "results" / "demo" / "tracks.done").exists()
    ), "the first run finished before it was stopped"


def recorded_blocks(workdir: Path) -> dict[int, int]:
    """Per unfinished shard of the segmentation, the blocks it recorded (block I is shard I mod N's).

    The run state is removed once the output is complete, so a rerun's skips are read from its logs.
    """
    shards = yaml.safe_load((workdir / "config.yaml").read_text())["streaming"]["shards"]
    blocks = Path(f"{workdir / STORE}.nahual") / "nuclei" / "blocks"  # run state beside the store
    counts: dict[int, int] = {}
    for index in Journal(str(blocks)).entries():
        shard = index % shards
        if not (workdir / "results" / "demo" / "nuclei" / f"shard{shard}-of-{shards}.done").exists():
            counts[shard] = counts.get(shard, 0) + 1
    return counts


def test_ctrl_c_leaves_nothing_and_the_rerun_resumes_to_the_same_outputs(default_run, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    try:
        start_and_stop_halfway(workdir, signal.SIGINT, whole_group=True)
        assert_nothing_left(workdir)
        before = recorded_blocks(workdir)
        assert before
        result = run_snakemake(workdir, "--cores", "2")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        stop_processes_in(workdir)
    shards = yaml.safe_load((workdir / "config.yaml").read_text())["streaming"]["shards"]
    for shard, count in before.items():  # finished blocks were not computed again
        log = workdir / "logs" / "model_apply" / "demo" / "nuclei" / f"shard{shard}-of-{shards}.log"
        assert f", {count} skipped of " in log.read_text(), log.read_text()
    assert_same_outputs(workdir, default_run)
    assert_nothing_left(workdir)


def test_a_killed_snakemake_needs_no_unlock_and_the_rerun_resumes(default_run, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    locks, record = workdir / ".snakemake" / "locks", workdir / ".snakemake" / "nahual-run.json"
    try:
        start_and_stop_halfway(workdir, signal.SIGKILL, whole_group=False)
        # its servers follow it (--parent); the lock it held stays
        wait_until(
            lambda: not [p for p in processes_in(workdir) if "nahual serve" in p[1]],
            timeout=60,
            what="the servers of the killed snakemake to exit",
        )
        held = sorted(os.listdir(locks))
        assert held
        local = json.loads(record.read_text())
        assert local["executor"] == "local" and local["local"] is True

        # never cleared by a run that may use a cluster executor, dry or not (the real one is refused)
        for args in (("-n",), ("--slurm-no-account",)):
            result = run_snakemake(workdir, "--executor", "slurm", "--jobs", "1", *args, timeout=120)
            assert sorted(os.listdir(locks)) == held, result.stdout[-3000:] + result.stderr[-3000:]
            assert "removed the lock" not in result.stderr
        assert result.returncode != 0 and "cannot be locked" in result.stdout + result.stderr
        assert "may use a cluster executor" in result.stderr

        # nor when the run that holds it used a cluster executor, whose jobs may still run elsewhere
        record.write_text(json.dumps({**local, "executor": "slurm", "local": False}))
        result = run_snakemake(workdir, "--cores", "2", timeout=120)
        assert result.returncode != 0 and sorted(os.listdir(locks)) == held
        assert "used the slurm executor" in result.stderr

        record.write_text(json.dumps(local))
        result = run_snakemake(workdir, "--cores", "2")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "removed the lock" in result.stderr
    finally:
        stop_processes_in(workdir)
    assert_same_outputs(workdir, default_run)


def test_a_failed_consumer_leaves_no_server_socket_lock_or_process(tmp_path):
    workdir = copy_workflow(tmp_path / "wf", {**CURRENT_ENV, "images": {"demo": {"path": STORE, "channel": 7}}})
    try:
        result = run_snakemake(workdir, "--cores", "2")
    finally:
        stop_processes_in(workdir)
    assert result.returncode != 0
    assert "channel 7 does not exist" in result.stdout + result.stderr
    assert_nothing_left(workdir)
    shards = workdir / "results" / "demo" / "nuclei"
    assert not shards.exists() or not any(shards.iterdir())  # the group's outputs are removed


def assert_same_outputs(workdir: Path, reference: Path) -> None:
    mine, theirs = outputs_of(workdir / STORE), outputs_of(reference / STORE)
    assert sorted(mine) == sorted(theirs)
    for key in mine:
        np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)


# ---------------------------------------------------------------- checks without running


def test_lint_finds_nothing_but_the_missing_conda_environments(tmp_path):
    # Rules run the nahual CLI of the orchestrator's environment; each model runs
    # in its own environment through nahual's launcher, not a rule's conda/container.
    workdir = copy_workflow(tmp_path / "wf")
    result = run_snakemake(workdir, "--lint", timeout=120)
    lints = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip().startswith("* ")]
    assert lints and set(lints) == {"* Specify a conda environment or container for each rule.:"}, lints


def test_dry_run_of_the_slurm_profile_plans_one_group_job_per_server(tmp_path):
    streaming = {"tile": {"y": 96, "x": 64}, "inflight": 3, "shards": 4}
    workdir = copy_workflow(tmp_path / "wf", {"models": {"threshold": {"instances": 2}}, "streaming": streaming})
    result = run_snakemake(workdir, "--workflow-profile", "profiles/slurm", "-n", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr
    for rule in ("demo_data", "env_prepare", "serve_model", "model_apply", "segment_stitch", "report_figures"):
        assert f"rule {rule}" in out, rule
    # one per server: two for nuclei (4 shards dealt over 2 instances), tracks, features
    assert out.count("Group job nahual") == 4
    assert out.count("rule model_apply") == 4 + 2 and out.count("rule serve_model") == 4
    for batch in (0, 1):
        assert f"--server ipc://results/servers/nuclei/demo/{batch}.sock" in out
    # every step gets the streaming options of the config, not the CLI's defaults
    applies = [line for line in out.splitlines() if "nahual apply " in line]
    assert len(applies) == 6 and all("--tile y=96,x=64 --level 0 --inflight 3" in line for line in applies), applies
    for index in range(4):
        assert sum(f"--shard {index}/4 " in line for line in applies) == 1


def test_a_step_s_params_are_merged_over_its_model_s(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["chain"].insert(1, {"name": "bright", "model": "threshold", "params": {"threshold": 900}})
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(workdir, "-n", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr
    base = config["models"]["threshold"]["params"]
    for step, params in (("nuclei", base), ("bright", {**base, "threshold": 900})):
        quoted = shlex.quote(json.dumps(params))
        serve = [line for line in out.splitlines() if f"nahual serve ipc://results/servers/{step}/" in line]
        apply = [line for line in out.splitlines() if f"apply resources/demo.zarr {step} " in line]
        assert serve and all(f"--params {quoted}" in line for line in serve), serve
        assert apply and all(f"--params {quoted}" in line for line in apply), apply


def test_the_weights_key_reaches_every_server_as_an_absolute_path(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    result = run_snakemake(workdir, "-n", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    serves = [line for line in result.stdout.splitlines() if "nahual serve " in line]
    assert serves and not any("--weights" in line for line in serves), serves  # null: the servers' own default
    result = run_snakemake(workdir, "-n", "--config", "weights=cache/w", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    serves = [line for line in result.stdout.splitlines() if "nahual serve " in line]
    expected = f"--weights {workdir.resolve() / 'cache' / 'w'}"
    assert len(serves) == 3 and all(expected in line for line in serves), serves


def test_the_schema_s_streaming_defaults_are_the_stream_options_defaults():
    from nahual.stream import StreamOptions

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    streaming = schema["properties"]["streaming"]["properties"]
    defaults = {key: entry["default"] for key, entry in streaming.items()}
    options = StreamOptions()
    fields = {field.name: getattr(options, field.name) for field in dataclasses.fields(options)}
    # shards (the workflow's consumer jobs per labels step) is StreamOptions' shard count
    assert defaults.pop("shards") == fields.pop("shard")[1] == 1
    assert defaults == fields
    assert StreamOptions.from_config(defaults) == options
    # an image may override every one of them, and has no defaults of its own (they would hide streaming's)
    image = next(branch for branch in schema["$defs"]["image"]["oneOf"] if branch["type"] == "object")
    assert set(streaming) <= set(image["properties"])
    assert not [key for key in streaming if "default" in image["properties"][key]]


@pytest.mark.parametrize(
    ("change", "messages"),
    [
        (
            {"streaming": {"tilee": 3}},
            ["config error at streaming.tilee: unknown key; allowed at streaming: tile, halo, level, channel"],
        ),
        (
            {"tilee": 3},
            ["config error at tilee: unknown key; allowed at the top level: images, weights, demo, models, chain"],
        ),
        (
            {"models": {"threshold": {"resources": {"gpus": 1}}}},
            ["config error at models.threshold.resources.gpus: unknown key; allowed at models.threshold.resources:"],
        ),
        ({"streaming": {"shards": "two"}}, ["config error at streaming.shards: 'two' is not of type 'integer'"]),
        (
            {"models": {"threshold": {"instances": 0}}},
            ["config error at models.threshold.instances: 0 is less than the minimum of 1"],
        ),
        (
            {"models": {"threshold": {"env": "conda:x"}}},
            ["config error at models.threshold.env: 'conda:x' does not match"],
        ),
        ({"images": {"x": 5}}, ["config error at images.x: expected a string or object, got 5"]),
        (
            {"models": {"threshold": {"params": {"sigmaa": 2}}}},
            ["config error at models.threshold.params: threshold: unknown param 'sigmaa' (did you mean 'sigma'?)"],
        ),
        (
            {"chain": [{"name": "nuclei", "model": "threshold", "params": {"sigma": -1}}]},
            ["config error at chain[0].params: threshold: param 'sigma' expects float >= 0, got -1"],
        ),
        (
            {"images": {"x": {"path": STORE, "scale": {"y": 0.5}}}},
            ["config error at images.x.scale: only a TIFF image takes a scale"],
        ),
        ({"chain": [{"name": "nuclei", "model": "thresh"}]}, ["config error at chain[0].model: 'thresh' is not a key"]),
        ({"chain": [{"name": "t", "model": "laptrack", "input": "nuclei"}]}, ["config error at chain[0].input"]),
        (
            {
                "chain": [
                    {"name": "p", "model": "threshold", "kind": "array"},
                    {"name": "t", "model": "laptrack", "input": "p"},
                ]
            },
            ["config error at chain[1].input: step 'p' writes array, not labels"],
        ),
        ({"images": {"other": "missing.zarr"}}, ["config error at images.other: 'missing.zarr' does not exist"]),
    ],
)
def test_bad_config_fails_with_a_message_naming_the_key(tmp_path, change, messages):
    workdir = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    merge(config, change)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "-n", timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for message in messages:
        assert message in output, output[-3000:]
    # one line, not the schema (it printed 556 lines)
    assert len(output.splitlines()) < 12 and "$defs" not in output, output


def merge(into: dict, change: dict) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
