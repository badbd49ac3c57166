"""Config reading of the nahual workflow: schema, images, models, chain, checked before any job runs.

The config is checked against ``workflow/schemas/config.schema.yaml`` (types,
unknown keys: one line naming the key, and the keys allowed there), then for
what a schema cannot say (references between steps and models, image paths,
each step's params against its model's parameter spec, the stream options
against the images that exist already). Every error names the config key at
fault. Config values are read with ``lookup(dpath=..., within=config)``.
records.smk then writes what each step of each image is made from.
"""

import json
import os
import time

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMA = "../workflow/schemas/config.schema.yaml"
#: When this run read its config: failures reported by failures.smk are those of logs written since.
STARTED = time.time()
#: Suffixes of the TIFF files ``nahual ingest`` reads (a folder of them is a series of frames).
TIFF_SUFFIXES = (".tif", ".tiff")
#: Where ``image_ingest`` writes an image given as TIFF: ``resources/NAME.zarr``.
INGESTED = "resources/{image}.zarr"
#: The name of the demo image when the config names no image.
DEMO_NAME = "demo"


def config_error(key, message):
    """A WorkflowError naming the config key at fault."""
    return WorkflowError(f"config error at {key}: {message}")


def dotted(path):
    """A config key as written in messages: ``models.threshold.params``, ``chain[0].name``."""
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def schema_error(error):
    """One line for a schema violation: the key, and for an unknown key the keys allowed at its level."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and "properties" in error.schema:
        allowed = list(error.schema["properties"])
        unknown = [key for key in error.instance if key not in allowed]
        level = dotted(path) or "the top level"
        return config_error(dotted(path + unknown[:1]), f"unknown key; allowed at {level}: {', '.join(allowed)}")
    if error.validator == "oneOf":
        kinds = " or ".join(str(branch.get("type")) for branch in error.validator_value)
        return config_error(dotted(path), f"expected a {kinds}, got {error.instance!r}")
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return config_error(dotted(path) or "the top level", message)


def check_schema(cfg):
    """Raise the one-line error of the most relevant schema violation (before defaults are filled in)."""
    import yaml
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    with open(os.path.join(workflow.basedir, "schemas", "config.schema.yaml")) as handle:
        schema = yaml.safe_load(handle)
    error = best_match(Draft202012Validator(schema).iter_errors(cfg))
    if error is not None:
        raise schema_error(error)


check_schema(config)
validate(config, SCHEMA)  # fills in the defaults; the config is valid by now


# ---------------------------------------------------------------- images


def parse_stream_options(name, settings):
    """The ``nahual apply`` stream options of one image: the streaming section merged with the image's keys."""
    from nahual.errors import NahualError
    from nahual.stream import StreamOptions

    try:
        return StreamOptions.from_config(settings, where=f"images.{name}")
    except NahualError as exc:  # its message starts with where
        raise WorkflowError(f"config error at {exc}") from None


def zarr_node(path):
    """``"group"`` or ``"array"`` for a Zarr node at ``path`` (v3 or v2 metadata), else None."""
    try:
        with open(os.path.join(path, "zarr.json")) as handle:
            return json.load(handle).get("node_type")
    except (OSError, ValueError):
        pass
    for meta, node in ((".zgroup", "group"), (".zarray", "array")):
        if os.path.isfile(os.path.join(path, meta)):
            return node
    return None


def is_tiff(path):
    """Whether ``nahual ingest`` reads ``path``: a TIFF file, or a folder of TIFF frames that is no Zarr store."""
    if path.lower().endswith(TIFF_SUFFIXES):
        return True
    return os.path.isdir(path) and any(name.lower().endswith(TIFF_SUFFIXES) for name in os.listdir(path))


def image_source(name, path, settings, demo_path):
    """How an image gets into the workflow: (made_by, where apply reads it, where its outputs go).

    ``made_by`` is ``demo`` (demo_data writes it), ``ingest`` (image_ingest converts a TIFF) or None (a
    Zarr store that exists: an OME-Zarr image, or a plain array whose outputs go to its parent group).
    """
    key = f"images.{name}"
    demo = os.path.normpath(path) == os.path.normpath(demo_path)
    if not demo and not os.path.exists(path):
        raise config_error(key, f"{path!r} does not exist (only demo.path, {demo_path!r}, is made by the workflow)")
    node = None if demo else zarr_node(path)
    if not demo and node is None and is_tiff(path):
        return "ingest", INGESTED.format(image=name), INGESTED.format(image=name)
    if "scale" in settings:
        raise config_error(f"{key}.scale", "only a TIFF image takes a scale (a Zarr image carries its pixel sizes)")
    if demo:
        return "demo", path, path
    if node == "group":
        return None, path, path
    if node == "array":
        return None, path, os.path.dirname(os.path.normpath(path))
    raise config_error(key, f"{path!r} is neither a Zarr image or array nor a TIFF file or folder of TIFFs")


def ingest_args(settings):
    """``nahual ingest`` options of a TIFF image: its axes and pixel sizes as the config gives them."""
    args = []
    if settings.get("axes"):
        args += ["--axes", settings["axes"]]
    if settings.get("scale"):
        args += ["--scale", ",".join(f"{axis}={size}" for axis, size in settings["scale"].items())]
    return args


def parse_images(cfg):
    """Image name -> {path, group, axes, made_by, source, ingest, shards, options, keys}.

    With no image named, the demo image alone (``demo``); otherwise the images named, the demo among
    them only when one of them is at ``demo.path``.
    """
    streaming = lookup(dpath="streaming", within=cfg)
    demo_path = lookup(dpath="demo/path", within=cfg)
    entries = lookup(dpath="images", within=cfg) or {DEMO_NAME: demo_path}
    images = {}
    for name, entry in entries.items():
        own = {"path": entry} if isinstance(entry, str) else entry
        settings = {**streaming, **own}
        made_by, path, group = image_source(name, settings["path"], own, demo_path)
        images[name] = {
            "path": path,
            "group": group,
            "axes": settings.get("axes") if made_by is None else None,
            "made_by": made_by,
            "source": settings["path"],
            "ingest": ingest_args(own) if made_by == "ingest" else [],
            "shards": settings["shards"],
            "options": parse_stream_options(name, settings),
            "channel_key": f"images.{name}.channel" if "channel" in own else "streaming.channel",
        }
    check_image_paths(images)
    return images


def check_image_paths(images):
    """Two images must not write into one store (an ingested one into the demo's), nor ingest over a non-store."""
    owners = {}
    for name, image in images.items():
        group = os.path.normpath(os.path.abspath(image["group"]))
        if group in owners:
            raise config_error(f"images.{name}", f"its outputs would go to {image['group']}, as those of images.{owners[group]}")
        owners[group] = name
        if image["made_by"] == "ingest" and os.path.exists(image["path"]) and zarr_node(image["path"]) is None:
            raise config_error(f"images.{name}", f"{image['path']} exists and is no Zarr store: move it away")


# ---------------------------------------------------------------- models and chain

#: Kinds whose steps write labels/STEP, which later steps may read (a cells step: its cells, buds over mothers).
LABEL_KINDS = ("labels", "cells")
#: Registered model name -> its class, or None when the orchestrator cannot import it (filled on demand).
MODEL_CLASSES = {}


def model_class(model):
    """The class of a model, or None (with a note, once) when it exists only in its own environment."""
    if model not in MODEL_CLASSES:
        from nahual.errors import NahualError
        from nahual.registry import resolve_model

        try:
            MODEL_CLASSES[model] = resolve_model(model)
        except NahualError as exc:
            MODEL_CLASSES[model] = None
            if workflow.is_main_process:
                logger.info(f"nahual: model {model!r} is not importable here ({exc}); its server checks its params")
    return MODEL_CLASSES[model]


def model_kind(model, key):
    """Output kind of a registered model, from its contract (the workflow handles every kind a contract may name)."""
    cls = model_class(model)
    if cls is None:
        raise config_error(key, f"cannot find the output kind of model {model!r} here; give kind: explicitly")
    return cls.contract.output


def check_params(model, params, key):
    """Check params against the model's parameter spec (names, types, ranges) where the model is importable."""
    from nahual.errors import ParamError

    cls = model_class(model)
    if cls is None:
        return
    try:
        cls.check_params(params)
    except ParamError as exc:
        raise config_error(key, str(exc)) from None


def speaks_earlier_wire(model):
    """Whether a model's steps go to a running server of the earlier nahual (``server: nahual0+ADDRESS``)."""
    return model.get("server", "").startswith("nahual0+")


def check_server(key, address):
    """A running server's address (``models.NAME.server``), checked as the consumers' client will take it."""
    from nahual._nng import check_address
    from nahual.client._legacy import is_legacy_address, parse_legacy_address
    from nahual.errors import ConfigError

    try:
        parse_legacy_address(address) if is_legacy_address(address) else check_address(address)
    except ConfigError as exc:
        raise config_error(f"models.{key}.server", str(exc)) from None


def parse_models(cfg):
    """Model key -> {model, params, env, instances, resources[, server]}; env defaults to the catalog's."""
    from nahual.catalog import default_env
    from nahual.errors import NahualError

    models = {}
    for key, entry in lookup(dpath="models", within=cfg).items():
        entry = dict(entry)
        entry.setdefault("model", key)
        if "server" in entry:  # a server that runs already: no environment, no server job
            check_server(key, entry["server"])
        elif "env" not in entry:
            try:
                entry["env"] = default_env(entry["model"])
            except NahualError as exc:
                raise config_error(f"models.{key}.env", str(exc))
        models[key] = entry
    return models


def parse_chain(cfg, models):
    """Step name -> {model, input, kind, params, keys}, in chain order; inputs must be earlier labels steps."""
    steps, checked = {}, set()
    for index, entry in enumerate(lookup(dpath="chain", within=cfg)):
        key = f"chain[{index}]"
        name = entry["name"]
        if name in steps:
            raise config_error(f"{key}.name", f"step {name!r} appears twice")
        if entry["model"] not in models:
            raise config_error(f"{key}.model", f"{entry['model']!r} is not a key of models (known: {', '.join(models)})")
        model = models[entry["model"]]
        kind = entry.get("kind") or model_kind(model["model"], f"{key}.kind")
        source = entry["input"]
        if source != "image":
            if source not in steps:
                raise config_error(f"{key}.input", f"{source!r} is neither 'image' nor an earlier step ({', '.join(steps) or 'none'})")
            if steps[source]["kind"] not in LABEL_KINDS:
                raise config_error(f"{key}.input", f"step {source!r} writes {steps[source]['kind']}, not labels")
            if kind == "cells":
                raise config_error(f"{key}.input", "a cells step segments the image itself: its input is image")
        elif kind == "tracks":
            raise config_error(f"{key}.input", "a tracker reads labels: name an earlier labels step")
        if not speaks_earlier_wire(model):  # an earlier-wire server's params are its setup dict, not ours
            if entry["model"] not in checked:
                check_params(model["model"], model["params"], f"models.{entry['model']}.params")
                checked.add(entry["model"])
            check_params(model["model"], entry["params"], f"{key}.params")
        params = {**model["params"], **entry["params"]}
        own = "params" in entry and "channel" in entry["params"]
        channel_key = f"{key}.params.channel" if own else f"models.{entry['model']}.params.channel"
        steps[name] = {"model": entry["model"], "input": source, "kind": kind, "params": params, "channel_key": channel_key}
    return steps


def parse_report(cfg, steps):
    """The labels and tracks steps the report draws (None when the chain has none)."""
    chosen = {}
    for kind in ("labels", "tracks"):
        name = lookup(dpath=f"report/{kind}", within=cfg, default=None)
        if name is None:
            name = next((s for s, step in steps.items() if step["kind"] == kind), None)
        elif name not in steps or steps[name]["kind"] != kind:
            raise config_error(f"report.{kind}", f"{name!r} is not a {kind} step of the chain")
        chosen[kind] = name
    return chosen


# ---------------------------------------------------------------- images against steps


def reads_image(step):
    """Whether a step sends the image itself (labels steps on the image, measurements of its labels)."""
    return step["input"] == "image" or step["kind"] in ("features", "embeddings")


def check_image_steps(name, image, steps, models):
    """Plan each step that reads an image that exists already, as its consumers will: errors name the key.

    Images the workflow makes (demo, ingest) are checked by the consumers when they run.
    """
    from nahual.errors import NahualError
    from nahual.stream import make_plan, open_source

    options = image["options"]
    try:
        source = open_source(image["path"], axes=image["axes"], level=options.level)
    except NahualError as exc:
        raise config_error(f"images.{name}", str(exc)) from None
    channels = source.shape[source.axes.index("c")] if "c" in source.axes else 1
    have = f"images.{name} has {channels} channel{'s' if channels > 1 else ''} (0..{channels - 1})"
    if options.channel is not None and options.channel >= channels:
        raise config_error(image["channel_key"], f"channel {options.channel} does not exist: {have}")
    for step_name, step in steps.items():
        if not reads_image(step):
            continue
        asked = step["params"].get("channel")
        if options.channel is None and "c" in source.axes and isinstance(asked, int) and asked >= channels:
            raise config_error(step["channel_key"], f"channel {asked} of step {step_name} does not exist: {have}")
        cls = None if speaks_earlier_wire(models[step["model"]]) else model_class(models[step["model"]]["model"])
        if cls is None:
            continue
        try:
            make_plan(cls.contract, step["kind"], source.axes, source.shape, tuple(source.array.chunks), options)
        except NahualError as exc:
            raise config_error(f"images.{name}", f"step {step_name}: {exc}") from None


IMAGES = parse_images(config)
MODELS = parse_models(config)
STEPS = parse_chain(config, MODELS)
REPORT = parse_report(config, STEPS)
DEMO = lookup(dpath="demo", within=config)
for _name, _image in IMAGES.items():
    if _image["made_by"] is None:
        check_image_steps(_name, _image, STEPS, MODELS)
