"""Config validation and input functions of the nahual workflow (the only Python in the rules).

The config is checked against ``workflow/schemas/config.schema.yaml`` (types,
unknown keys), then for what a schema cannot say (references between steps
and models, image paths). Every error names the config key at fault.

Paths (``{image}`` and ``{step}`` are config names, ``{batch}`` a server index):

- ``results/servers/{step}/{batch}.ready``: service file of one model server,
  created by ``nahual serve`` once the model is loaded; its socket beside it
  (``.sock``, an ipc address relative to the working directory: short, and
  the same on every node);
- ``results/{image}/{step}/shard{i}-of-{n}.done``: one consumer of a labels step done;
- ``results/{image}/{step}.done``: a step done for an image (the output is
  inside the image store: ``labels/{step}``, ``tracks/{step}`` or ``tables/{step}``);
- ``results/{image}/report/*.png``: the pictures of the report.
"""

import json
import os
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMA = "../workflow/schemas/config.schema.yaml"

# First without defaults, so that a wrong type gets the validator's message
# (filling defaults into a string instead of an object would crash instead).
validate(config, SCHEMA, set_default=False)
validate(config, SCHEMA)


def config_error(key, message):
    """A WorkflowError naming the config key at fault."""
    return WorkflowError(f"config error at {key}: {message}")


def parse_images(cfg):
    """Image name -> {path, axes, channel, tile, halo, shards, inflight} with streaming defaults filled in."""
    stream = cfg["streaming"]
    images = {}
    for name, entry in cfg["images"].items():
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        for key in ("tile", "halo", "shards", "inflight"):
            entry.setdefault(key, stream[key])
        entry.setdefault("axes", None)
        entry.setdefault("channel", None)
        entry["demo"] = os.path.normpath(entry["path"]) == os.path.normpath(cfg["demo"]["path"])
        if not entry["demo"] and not os.path.exists(entry["path"]):
            raise config_error(
                f"images.{name}", f"{entry['path']!r} does not exist (only demo.path, {cfg['demo']['path']!r}, is made by the workflow)"
            )
        images[name] = entry
    return images


#: Output kinds the workflow handles: labels (segment.smk), tracks (track.smk), tables (measure.smk).
KINDS = ("labels", "tracks", "features", "embeddings")


def model_kind(model, key):
    """Output kind of a registered model, from its contract (imports only the adapter module)."""
    from nahual.errors import NahualError
    from nahual.registry import resolve_model

    try:
        kind = resolve_model(model).contract.output
    except NahualError as exc:
        raise config_error(key, f"cannot find the output kind of model {model!r} ({exc}); give kind: explicitly")
    if kind not in KINDS:
        raise config_error(key, f"model {model!r} outputs {kind!r}; the workflow handles {', '.join(KINDS)}")
    return kind


def parse_models(cfg):
    """Model key -> {model, params, env, instances, resources}; env defaults to the catalog's."""
    from nahual.catalog import default_env
    from nahual.errors import NahualError

    models = {}
    for key, entry in cfg["models"].items():
        entry = dict(entry)
        entry.setdefault("model", key)
        if "env" not in entry:
            try:
                entry["env"] = default_env(entry["model"])
            except NahualError as exc:
                raise config_error(f"models.{key}.env", str(exc))
        models[key] = entry
    return models


def parse_chain(cfg, models):
    """Step name -> {model, input, kind, params}, in chain order; inputs must be earlier labels steps."""
    steps = {}
    for index, entry in enumerate(cfg["chain"]):
        key = f"chain[{index}]"
        name = entry["name"]
        if name in steps:
            raise config_error(f"{key}.name", f"step {name!r} appears twice")
        if entry["model"] not in models:
            raise config_error(f"{key}.model", f"{entry['model']!r} is not a key of models (known: {', '.join(models)})")
        kind = entry.get("kind") or model_kind(models[entry["model"]]["model"], f"{key}.kind")
        source = entry["input"]
        if source != "image":
            if source not in steps:
                raise config_error(f"{key}.input", f"{source!r} is neither 'image' nor an earlier step ({', '.join(steps) or 'none'})")
            if steps[source]["kind"] != "labels":
                raise config_error(f"{key}.input", f"step {source!r} writes {steps[source]['kind']}, not labels")
        elif kind == "tracks":
            raise config_error(f"{key}.input", "a tracker reads labels: name an earlier labels step")
        params = {**models[entry["model"]]["params"], **entry["params"]}
        steps[name] = {"model": entry["model"], "input": source, "kind": kind, "params": params}
    return steps


def parse_report(cfg, steps):
    """The labels and tracks steps the report draws (None when the chain has none)."""
    chosen = {}
    for kind in ("labels", "tracks"):
        name = cfg["report"].get(kind)
        if name is None:
            name = next((s for s, step in steps.items() if step["kind"] == kind), None)
        elif name not in steps or steps[name]["kind"] != kind:
            raise config_error(f"report.{kind}", f"{name!r} is not a {kind} step of the chain")
        chosen[kind] = name
    return chosen


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
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                if b"snakemake" in f.read():
                    return True
        except OSError:
            continue
    return False


def clear_stale_lock():
    """Remove the lock a killed snakemake left, so that a rerun needs no ``--unlock``.

    Only in the main process, and only when no other snakemake process runs in
    this directory (on the cluster, jobs of a killed run keep the lock alive).
    """
    locks = os.path.join(".snakemake", "locks")
    if not workflow.is_main_process or not os.path.isdir(locks) or not os.listdir(locks):
        return
    if snakemake_running_here():
        return
    for name in os.listdir(locks):
        os.unlink(os.path.join(locks, name))
    logger.warning("nahual: removed the lock left by a snakemake run that was killed")


clear_stale_lock()

IMAGES = parse_images(config)
MODELS = parse_models(config)
STEPS = parse_chain(config, MODELS)
REPORT = parse_report(config, STEPS)
DEMO = config["demo"]


def steps_of(kind):
    """Names of the steps of one output kind."""
    return [name for name, step in STEPS.items() if step["kind"] == kind]


def name_pattern(names):
    """A wildcard constraint matching exactly these names (and nothing when empty)."""
    return "|".join(names) if names else "(?!x)x"


wildcard_constraints:
    image=name_pattern(list(IMAGES)),
    model=name_pattern(list(MODELS)),
    batch=r"\d+",
    shard=r"\d+-of-\d+",


# ---------------------------------------------------------------- outputs


def shard_names(image):
    """Shard wildcard values of one image's labels steps: 0-of-N .. N-1-of-N."""
    count = IMAGES[image]["shards"]
    return [f"{index}-of-{count}" for index in range(count)]


def consumers_of(step):
    """(image, shard) of every consumer job of a step, in a fixed order (shard None: one job per image)."""
    if STEPS[step]["kind"] == "labels":
        return [(image, shard) for image in IMAGES for shard in shard_names(image)]
    return [(image, None) for image in IMAGES]


def step_marker(image, step):
    return f"results/{image}/{step}.done"


def get_final_output():
    """Every step marker of every image, and the report pictures."""
    outputs = [step_marker(image, step) for image in IMAGES for step in STEPS]
    outputs += [f"results/{image}/report/{figure}.png" for image in IMAGES for figure in report_figures()]
    return outputs


def report_figures():
    """The pictures the chain allows: outlines need labels, tracks need tracks."""
    figures = []
    if REPORT["labels"]:
        figures.append("outlines")
    if REPORT["tracks"]:
        figures.append("tracks")
    if REPORT["labels"] or REPORT["tracks"]:
        figures.append("summary")
    return figures


# ---------------------------------------------------------------- servers


def get_server(wildcards):
    """The service file of the server a consumer uses: consumers are dealt round-robin over the instances."""
    step = wildcards.step
    shard = getattr(wildcards, "shard", None)
    position = consumers_of(step).index((wildcards.image, shard))
    batch = position % MODELS[STEPS[step]["model"]]["instances"]
    return f"results/servers/{step}/{batch}.ready"


def get_server_socket(wildcards):
    """The socket of that server (also a service file, so that Snakemake removes it after a failure)."""
    return get_server(wildcards)[: -len(".ready")] + ".sock"


def get_server_address(wildcards):
    return f"ipc://{get_server_socket(wildcards)}"


def get_env_marker(wildcards):
    """The env_prepare output of the model a step uses."""
    return f"results/envs/{STEPS[wildcards.step]['model']}.txt"


def model_of(step):
    return MODELS[STEPS[step]["model"]]


def get_serve_args(wildcards):
    """``nahual serve`` options after the address: environment, preload and the step's params."""
    entry, params = model_of(wildcards.step), STEPS[wildcards.step]["params"]
    return shlex.join(["--env", entry["env"], "--preload", entry["model"], "--params", json.dumps(params)])


def server_resource(name):
    """A resource of the server job of a step, from models.<model>.resources."""

    def get(wildcards):
        return model_of(wildcards.step)["resources"][name]

    return get


# ---------------------------------------------------------------- consumers


def image_input(image):
    """The image store as a job input: the demo's root metadata (made by demo_data), else the store itself.

    ``ancient``: the store's mtime changes as outputs are written into it, which must not rerun anything.
    """
    entry = IMAGES[image]
    if entry["demo"]:
        return ancient(os.path.join(entry["path"], "zarr.json"))
    return ancient(entry["path"])


def get_step_inputs(wildcards):
    """Image store, the marker of the step's input step (if any) and the server's service file."""
    inputs = {"image": image_input(wildcards.image)}
    source = STEPS[wildcards.step]["input"]
    if source != "image":
        inputs["source"] = step_marker(wildcards.image, source)
    return inputs


def get_source(wildcards):
    """What ``nahual apply`` reads: the image (with ``--labels`` for measurements), or ``IMAGE/labels/STEP``."""
    path = IMAGES[wildcards.image]["path"]
    step = STEPS[wildcards.step]
    if step["input"] == "image" or step["kind"] in ("features", "embeddings"):
        return path
    return f"{path}/labels/{step['input']}"


def get_apply_args(wildcards):
    """``nahual apply`` options of one consumer: model, params, tiling, sharding (shell-quoted)."""
    step, image = STEPS[wildcards.step], IMAGES[wildcards.image]
    entry = MODELS[step["model"]]
    args = ["--model", entry["model"], "--kind", step["kind"], "--inflight", str(image["inflight"])]
    if step["params"]:
        args += ["--params", json.dumps(step["params"])]
    if image["axes"]:
        args += ["--axes", image["axes"]]
    if image["channel"] is not None:
        args += ["--channel", str(image["channel"])]
    if step["kind"] == "labels":
        tile = ",".join(f"{axis}={size}" for axis, size in image["tile"].items()) or "none"
        args += ["--tile", tile]
        if image["halo"] is not None:
            args += ["--halo", str(image["halo"])]
        shard = getattr(wildcards, "shard", None)
        if shard:
            args += ["--shard", shard.replace("-of-", "/")]
    if step["kind"] in ("features", "embeddings") and step["input"] != "image":
        args += ["--labels", step["input"]]
    return shlex.join(args)


def get_shard_markers(wildcards):
    return expand("results/{image}/{step}/shard{shard}.done", shard=shard_names(wildcards.image), **wildcards)


def get_store(wildcards):
    return IMAGES[wildcards.image]["path"]


# ---------------------------------------------------------------- report


def get_report_inputs(wildcards):
    inputs = {"image": image_input(wildcards.image)}
    for kind, step in REPORT.items():
        if step:
            inputs[kind] = step_marker(wildcards.image, step)
    return inputs


def get_report_args(wildcards):
    args = ["--frames", str(config["report"]["frames"])]
    for kind, step in REPORT.items():
        if step:
            args += [f"--{kind}", step]
    return shlex.join(args)


# ---------------------------------------------------------------- demo


def get_demo_args():
    """``nahual demo-data`` options from the demo section."""
    args = ["--seed", str(DEMO["seed"]), "--levels", str(DEMO["levels"])]
    if DEMO["large"]:
        return shlex.join(args + ["--large"])
    for key in ("frames", "size", "nuclei"):
        if key in DEMO:
            args += [f"--{key}", str(DEMO[key])]
    return shlex.join(args)
