"""Paths and input functions of the nahual workflow (config.smk reads the config into IMAGES, MODELS, STEPS).

Paths (``{image}`` and ``{step}`` are config names, ``{batch}`` a server index,
``{consumer}`` one consumer job of a step: ``STEP/shardI-of-N`` for labels
and array steps, ``STEP`` for the others):

- ``results/images/{image}.ingested``: an image given as TIFF was converted
  into ``resources/{image}.zarr`` (image_ingest);
- ``results/params/{image}/{step}.json``: what decides a step's output for an
  image (model, params, kind, input, stream options), and
  ``results/params/{image}.json`` how an image the workflow makes is made (the
  TIFF and its axes and scale, or the demo section); rewritten by records.smk
  only when they change, so that their mtimes say what an edit changed;
- ``results/{image}/{step}.reset``: the step's output was started afresh for
  that record (output_reset), so that no earlier run's state is resumed;
- ``results/servers/{step}/{image}/{batch}.ready``: service file of one model
  server, written by ``nahual serve`` once the model is loaded (or, holding
  the error, once it failed to load); its socket beside it (``.sock``, an ipc
  address relative to the working directory: short, the same on every node).
  Each image has its own servers, so that adding an image runs that image only;
- ``results/{image}/{consumer}.done``: one consumer done (``nahual apply --done``);
  for a tracks or tables step that is the step done;
- ``results/{image}/{step}.done``: a step done for an image (the output is
  inside the image store: ``labels/{step}``, ``tracks/{step}``, ``tables/{step}``
  or, for an array step, ``predictions/{step}``);
- ``results/{image}/report/*.png``: the pictures of the report.
"""

import json
import os
import shlex


#: Kinds whose steps run as ``streaming.shards`` consumer jobs per image, then one stitch (segment.smk):
#: those that write a per-pixel image (labels, predictions), cut into blocks that any job may write.
SHARDED_KINDS = ("labels", "array")


def steps_of(*kinds):
    """Names of the steps of these output kinds."""
    return [name for name, step in STEPS.items() if step["kind"] in kinds]


def name_pattern(names):
    """A wildcard constraint matching exactly these names (and nothing when empty)."""
    return "|".join(names) if names else "(?!x)x"


def consumer_name(step, shard):
    """The ``{consumer}`` wildcard of one consumer job: ``STEP/shardI-of-N`` (labels steps) or ``STEP``."""
    return step if shard is None else f"{step}/shard{shard[0]}-of-{shard[1]}"


def parse_consumer(consumer):
    """(step, shard) of a ``{consumer}`` wildcard; shard (I, N), or None for a step with one job per image."""
    step, _, shard = consumer.partition("/")
    if not shard:
        return step, None
    index, _, count = shard.removeprefix("shard").partition("-of-")
    return step, (int(index), int(count))


def consumer_pattern():
    """A wildcard constraint matching the consumers of every step (and no step marker of a sharded step)."""
    sharded = [rf"{step}/shard\d+-of-\d+" for step in steps_of(*SHARDED_KINDS)]
    return name_pattern(sharded + [step for step, entry in STEPS.items() if entry["kind"] not in SHARDED_KINDS])


wildcard_constraints:
    image=name_pattern(list(IMAGES)),
    model=name_pattern(list(MODELS)),
    step=name_pattern(list(STEPS)),
    batch=r"\d+",
    consumer=consumer_pattern(),


# ---------------------------------------------------------------- outputs


def shards_of(image):
    """The shards (I, N) of one image's labels and array steps, one consumer job each."""
    count = IMAGES[image]["shards"]
    return [(index, count) for index in range(count)]


def step_marker(image, step):
    """The marker of a step done for an image (a stitch's for sharded steps, the one consumer's otherwise)."""
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


# ---------------------------------------------------------------- images


def image_input(image):
    """The image as a job input: the file that says it was made (demo, ingest), or the user's store itself.

    A store the user gives is ``ancient``: its mtime changes as outputs are
    written into it, which must not rerun anything. The markers of made
    images change only when the image is made again, which redoes its steps.
    """
    entry = IMAGES[image]
    if entry["made_by"] == "demo":
        return os.path.join(entry["path"], "zarr.json")
    if entry["made_by"] == "ingest":
        return f"results/images/{image}.ingested"
    return ancient(entry["path"])


def get_ingest_inputs(wildcards):
    """The TIFF file (or folder of TIFFs) of an image given as TIFF, and the record of how it is read."""
    return {"tiff": IMAGES[wildcards.image]["source"], "record": params_file(wildcards.image)}


def get_demo_record(wildcards):
    """The record of the demo section, when an image is the demo (a change makes the demo again)."""
    return [params_file(name) for name, image in IMAGES.items() if image["made_by"] == "demo"]


def get_ingest_args(wildcards):
    """``nahual ingest IN OUT`` and its options: the image's axes and pixel sizes."""
    entry = IMAGES[wildcards.image]
    return shlex.join([entry["source"], entry["path"], *entry["ingest"]])


def get_ingest_folder(wildcards):
    """The folder the ingested store goes into (``nahual ingest`` wants it to exist)."""
    return os.path.dirname(IMAGES[wildcards.image]["path"])


def get_demo_args():
    """``nahual demo-data`` options from the demo section."""
    args = ["--seed", str(DEMO["seed"]), "--levels", str(DEMO["levels"])]
    if DEMO["large"]:
        return shlex.join(args + ["--large"])
    for key in ("frames", "size", "nuclei"):
        if key in DEMO:
            args += [f"--{key}", str(DEMO[key])]
    return shlex.join(args)


def get_output_folder(wildcards, output):
    """The folder of a job's first output: the demo store, the folder of the report pictures."""
    return os.path.dirname(output[0])


def get_store(wildcards):
    """The group a step writes into: the image, or the parent group of a plain array."""
    return IMAGES[wildcards.image]["group"]


# ---------------------------------------------------------------- servers


def model_of(step):
    return MODELS[STEPS[step]["model"]]


def get_server(wildcards):
    """The service file of the server a consumer uses: the image's shards are dealt round-robin over its instances.

    None (``[]``) for a model with ``server:``: that server runs already, and no job here starts it.
    """
    step, shard = parse_consumer(wildcards.consumer)
    if "server" in model_of(step):
        return []
    batch = (shard[0] if shard else 0) % model_of(step)["instances"]
    return f"results/servers/{step}/{wildcards.image}/{batch}.ready"


def get_server_socket(wildcards):
    """The socket of that server (also a service file, so that Snakemake removes it after a failure)."""
    ready = get_server(wildcards)
    return ready[: -len(".ready")] + ".sock" if ready else []


def get_server_address(wildcards):
    """The ipc address of that server, relative to the working directory; or the model's ``server:``."""
    running = model_of(parse_consumer(wildcards.consumer)[0]).get("server")
    return running or f"ipc://{get_server_socket(wildcards)}"


def get_ready_arg(wildcards, input):
    """``--ready FILE`` of a consumer whose server the workflow starts; nothing for a model's ``server:``."""
    return f"--ready {shlex.quote(input.server)}" if input.server else ""


def get_serve_address(wildcards, output):
    """The ipc address a server listens on: its socket output."""
    return f"ipc://{output.socket}"


def get_env_marker(wildcards):
    """The env_prepare output of the model a step uses."""
    return f"results/envs/{STEPS[wildcards.step]['model']}.txt"


def get_env_spec(wildcards):
    """The environment spec of a model, for env_prepare."""
    return MODELS[wildcards.model]["env"]


def get_serve_args(wildcards):
    """``nahual serve`` options after the address: environment, preload and the step's params."""
    entry, params = model_of(wildcards.step), STEPS[wildcards.step]["params"]
    args = ["--env", entry["env"], "--preload", entry["model"], "--params", json.dumps(params)]
    if ":" in entry["model"]:  # a module:Class the config names (the socket is the user's own, mode 0600)
        args.append("--allow-module-models")
    if config["weights"]:  # absolute: a Slurm job may start elsewhere
        args += ["--weights", os.path.abspath(os.path.expanduser(config["weights"]))]
    return shlex.join(args)


def server_resource(name):
    """A resource of the server job of a step, from models.<model>.resources."""

    def get(wildcards):
        return model_of(wildcards.step)["resources"][name]

    return get


# ---------------------------------------------------------------- consumers


def get_reset_inputs(wildcards):
    """What a step's output of an image is made from: its record, the image, the input step's marker."""
    inputs = {"params": params_file(wildcards.image, wildcards.step), "image": image_input(wildcards.image)}
    source = STEPS[wildcards.step]["input"]
    if source != "image":
        inputs["source"] = step_marker(wildcards.image, source)
    return inputs


def get_consumer_inputs(wildcards):
    """Image, the step's reset marker and the marker of the step's input step (if any)."""
    step = parse_consumer(wildcards.consumer)[0]
    inputs = {"image": image_input(wildcards.image), "reset": f"results/{wildcards.image}/{step}.reset"}
    source = STEPS[step]["input"]
    if source != "image":
        inputs["source"] = step_marker(wildcards.image, source)
    return inputs


def get_step(wildcards):
    """The step a consumer runs: the name of its output in the image store."""
    return parse_consumer(wildcards.consumer)[0]


def get_source(wildcards):
    """What ``nahual apply`` reads: the image (with ``--labels`` for measurements), or ``GROUP/labels/STEP``."""
    image = IMAGES[wildcards.image]
    step = STEPS[get_step(wildcards)]
    if reads_image(step):
        return image["path"]
    return f"{image['group']}/labels/{step['input']}"


def get_apply_args(wildcards):
    """``nahual apply`` options of one consumer: model, kind, params, the image's stream options and shard."""
    name, shard = parse_consumer(wildcards.consumer)
    step, image = STEPS[name], IMAGES[wildcards.image]
    options = image["options"] if shard is None else image["options"].replace(shard=shard)
    args = ["--model", MODELS[step["model"]]["model"], "--kind", step["kind"], *options.to_cli()]
    if step["params"]:
        args += ["--params", json.dumps(step["params"])]
    if image["axes"] and reads_image(step):
        args += ["--axes", image["axes"]]
    if step["kind"] in ("features", "embeddings") and step["input"] != "image":
        args += ["--labels", step["input"]]
    return shlex.join(args)


def get_shard_markers(wildcards):
    """The markers of every consumer of a sharded step (labels, array), for its stitch."""
    names = [consumer_name(wildcards.step, shard) for shard in shards_of(wildcards.image)]
    return [f"results/{wildcards.image}/{name}.done" for name in names]


# ---------------------------------------------------------------- report


def report_outputs():
    """The pictures of one image, as report items captioned by workflow/report/FIGURE.rst."""
    return {
        figure: report(
            f"results/{{image}}/report/{figure}.png",
            caption=f"../workflow/report/{figure}.rst",
            category="{image}",
            labels={"image": "{image}", "figure": figure},
        )
        for figure in report_figures()
    }


def get_report_inputs(wildcards):
    inputs = {"image": image_input(wildcards.image)}
    for kind, step in REPORT.items():
        if step:
            inputs[kind] = step_marker(wildcards.image, step)
    return inputs


def get_report_image(wildcards):
    """What ``nahual report`` reads: the image, or a plain array (with its axes)."""
    return IMAGES[wildcards.image]["path"]


def get_report_args(wildcards):
    args = ["--frames", str(lookup(dpath="report/frames", within=config))]
    for kind, step in REPORT.items():
        if step:
            args += [f"--{kind}", step]
    if IMAGES[wildcards.image]["axes"]:
        args += ["--axes", IMAGES[wildcards.image]["axes"]]
    return shlex.join(args)
