"""The records of the nahual workflow: what each step of each image, and each image the workflow makes, is made from.

Written once the config is read (config.smk), to ``results/params/`` and
rewritten only when a record changes, so that an edit redoes exactly the
steps it changes (their mtimes are inputs of output_reset, apply.smk).
"""

import json
import os


def step_record(image, step):
    """What decides a step's output for an image: model, params, kind, input and the options that change results."""
    options = image["options"]
    return {
        "model": MODELS[step["model"]]["model"],
        "params": step["params"],
        "kind": step["kind"],
        "input": step["input"],
        "axes": image["axes"],
        "options": {"tile": options.tile, "halo": options.halo, "level": options.level, "channel": options.channel},
    }


def image_record(image):
    """What decides an image the workflow makes: the TIFF and how it is read, or the demo section."""
    if image["made_by"] == "ingest":
        return {"source": image["source"], "ingest": image["ingest"]}
    return {"demo": DEMO}


def params_file(image, step=None):
    """The record of one step of one image (an input of its reset, apply.smk), or of how an image is made."""
    return f"results/params/{image}.json" if step is None else f"results/params/{image}/{step}.json"


def write_record(path, record):
    """Write a record where its content changed (only then: its mtime is what reruns the jobs that read it)."""
    text = json.dumps(record, sort_keys=True) + "\n"
    try:
        with open(path) as handle:
            if handle.read() == text:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.part", "w") as handle:
        handle.write(text)
    os.replace(f"{path}.part", path)


def write_records():
    """The records of every image the workflow makes and of every step of every image (main process only)."""
    if not workflow.is_main_process:
        return
    for image_name, image in IMAGES.items():
        if image["made_by"]:
            write_record(params_file(image_name), image_record(image))
        for step_name, step in STEPS.items():
            write_record(params_file(image_name, step_name), step_record(image, step))


write_records()
