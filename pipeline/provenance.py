"""Which config keys each step reads, the provenance record its outputs carry, and the check
that refuses an upstream output made from another config.

One table (:data:`STEPS`, the stage registry :data:`pipeline.stages.STAGES`) says, per
``python -m pipeline STEP``, the config keys the step reads (dotted YAML keys, ``{model}``-style
fields filled from the step's own keys) and the upstream steps whose outputs it reads. From it:

* :func:`record` — ``{"step", "keys", "config", "hash"}``: ``config`` is every key the step
  depends on, its own and its upstream steps' (transitively), with its resolved value
  (defaults filled in), and ``hash`` is :func:`~pipeline.config.stable_hash` of it. Each stage
  writes it into its JSON output; each Snakemake rule passes ``hash`` as a ``params`` value,
  so Snakemake's params trigger reruns exactly the steps whose keys changed (and, through
  their newer outputs, everything downstream). No file path of the config itself and no
  ``paths`` entry is hashed: two configs sharing a cache plan the same extraction, and
  ``--configfile config.yaml`` plans what ``config.yaml`` by default does.
* :func:`check_inputs` — before a step runs by hand: each upstream JSON's recorded hash must
  equal the one the current config gives, and each store it reads must have been extracted
  with the current ``models`` / ``datasets`` / ``extract`` keys; else :class:`StaleInputError`
  names the file and the changed keys.
* :func:`weights_inputs` — a local model folder's weight files, as extraction inputs.
* :func:`dataset_files_digest` — a stat digest of a dataset's files, an extraction ``params`` value.

Reads: the config, upstream JSON outputs, store attributes (``zarr.json``). Writes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.config import CacheRef, Config, ConfigError, schema_default, stable_hash, to_jsonable
from pipeline.models.spec import weight_files
from pipeline.probe_kinds import PROBE_KINDS, probe_section
from pipeline.stages import EXTRACT_KEYS, QUANTIFY_KEYS, SAE_TRAIN_KEYS, STAGES, Keys, Stage  # noqa: F401  (re-exported)


class StaleInputError(ConfigError):
    """An upstream output (or store) was made from other config values than the current ones."""


# The table of steps (keys each reads, upstream steps, the JSON holding its record) is the
# stage registry's: pipeline.stages owns it, and the extraction's keys with it.
STEPS = STAGES
Step = Stage


# ---------------------------------------------------------------------------- the config, flat


def config_view(cfg: Config) -> dict[str, Any]:
    """The resolved config (defaults filled in) shaped as the YAML is (``probes.<kind>`` for every registered kind)."""
    manipulate = to_jsonable(cfg.manipulate)
    if manipulate is not None:
        # by name, with the YAML's key `class` (the dataclass field is target_class)
        manipulate["examples"] = {
            e["name"]: {("class" if k == "target_class" else k): v for k, v in e.items()}
            for e in manipulate["examples"]
        }
    return {
        "demo": to_jsonable(cfg.demo),
        "models": {
            n: {
                "family": m.spec.family,
                "source": str(m.spec.source),
                "revision": m.spec.revision,
                "preprocess": to_jsonable(m.preprocess),
            }
            for n, m in cfg.models.items()
        },
        "datasets": {n: {k: v for k, v in to_jsonable(d).items() if k != "name"} for n, d in cfg.datasets.items()},
        "extract": _extract_view(cfg),
        "probes": {kind: to_jsonable(probe_section(cfg, kind)) for kind in PROBE_KINDS},
        "sae": _sae_view(cfg),
        "quantify": to_jsonable(cfg.quantify),
        "dimred": to_jsonable(cfg.dimred),
        "manipulate": manipulate,
    }


def _sae_view(cfg: Config) -> Any:
    """``sae`` as recorded; ``kinds`` left out at its default (``[{kind: relu}]``, the sweep of before
    kinds existed), so results made then keep their hash and stay current."""
    view = to_jsonable(cfg.sae)
    if isinstance(view, dict) and view.get("kinds") == list(to_jsonable(schema_default("sae/kinds"))):
        del view["kinds"]
    return view


# extract keys added after outputs existed -> their value then (the default): left out at it
_EXTRACT_OMITTED = {"shard_images": 0, "decode": "cpu"}


def _extract_view(cfg: Config) -> Any:
    """``extract`` as recorded; ``shard_images`` (0) and ``decode`` (cpu) left out at their defaults,
    the layout and decoding of before those keys existed, so outputs made then stay current."""
    view = to_jsonable(cfg.extract)
    for key, before in _EXTRACT_OMITTED.items():
        if isinstance(view, dict) and view.get(key) == before:
            del view[key]
    return view


_ABSENT = object()
OMITTED_AT_DEFAULT = frozenset({"sae.kinds", *(f"extract.{k}" for k in _EXTRACT_OMITTED)})
"""Keys a view leaves out at their default (:func:`_sae_view`, :func:`_extract_view`): not recorded, not hashed."""


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}", sub, out)
    else:
        out[prefix] = value


def _lookup(view: dict, dotted: str) -> Any:
    node: Any = view
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        if dotted in OMITTED_AT_DEFAULT and part not in node:
            return _ABSENT
        node = node.get(part)
    return node


def step_config(cfg: Config, step: str, keys: Keys | None = None, *, _view: dict | None = None) -> dict[str, Any]:
    """Every config key ``step`` depends on (its own and its upstream steps'), flattened, with its value."""
    keys = keys or {}
    view = _view if _view is not None else config_view(cfg)
    out: dict[str, Any] = {}
    for up, up_keys in STEPS[step].upstream(cfg, keys):
        out.update(step_config(cfg, up, up_keys, _view=view))
    for pattern in STEPS[step].reads:
        dotted = pattern.format(**keys)
        value = _lookup(view, dotted)
        if value is not _ABSENT:
            _flatten(dotted, value, out)
    return dict(sorted(out.items()))


def record(cfg: Config, step: str, **keys: str) -> dict[str, Any]:
    """What an output of ``step`` records about the config it was made from."""
    flat = step_config(cfg, step, keys)
    return {"step": step, "keys": keys, "hash": stable_hash(flat), "config": flat}


def step_hash(cfg: Config, step: str, **keys: str) -> str:
    """The ``params`` value of ``step``'s rule: changes exactly when a key the step depends on does."""
    return record(cfg, step, **keys)["hash"]


# ---------------------------------------------------------------------------- checks


def changed_keys(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k, "<absent>") != now.get(k, "<absent>"))


def _describe(recorded: dict[str, Any], now: dict[str, Any], keys: list[str], limit: int = 6) -> str:
    shown = [f"{k} ({json.dumps(recorded.get(k))} -> {json.dumps(now.get(k))})" for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _recorded(path: Path) -> dict | None:
    """The provenance record in a step's JSON output: top level, or in a probe's ``meta``."""
    doc = json.loads(path.read_text())
    return doc.get("provenance") or (doc.get("meta") or {}).get("provenance")


def check_output(cfg: Config, step: str, keys: Keys | None = None) -> None:
    """Raise StaleInputError unless ``step``'s JSON output records the hash the config gives now."""
    keys = keys or {}
    path = STEPS[step].output(cfg, keys)
    if not path.exists():
        return  # the reading step reports the missing file itself (FileNotFoundError / CacheError)
    found = _recorded(path)
    now = record(cfg, step, **keys)
    if found is None:
        raise StaleInputError(f"{path}: records no config provenance (made by an older version); rerun `{step}`")
    if found.get("hash") != now["hash"]:
        diff = changed_keys(found.get("config", {}), now["config"])
        raise StaleInputError(
            f"{path}: made from another config ({cfg.source} changed since: {_describe(found.get('config', {}), now['config'], diff)}); "
            f"rerun `{step}` (snakemake reruns it and what depends on it)"
        )


def store_expectation(cfg: Config, ref: CacheRef, split: str, attrs: dict) -> dict[str, tuple[Any, Any]]:
    """Config key -> (value in the store, value the config gives) for what a store records of the config."""
    stored = attrs.get("config", {})
    model, dataset, ex = cfg.model(ref.model), cfg.dataset(ref.dataset), cfg.extract
    n_blocks = attrs.get("n_blocks")
    layers = sorted({layer % n_blocks for layer in ex.layers}) if n_blocks else list(ex.layers)
    m, d = f"models.{ref.model}", f"datasets.{ref.dataset}"
    return {
        f"{m}.family": (stored.get("model", {}).get("family"), model.spec.family),
        f"{m}.source": (stored.get("model", {}).get("source"), str(model.spec.source)),
        f"{m}.revision": (stored.get("model", {}).get("revision"), model.spec.revision),
        f"{m}.preprocess": (stored.get("preprocess"), to_jsonable(model.preprocess)),
        "extract.layers": (stored.get("layers"), layers),
        "extract.dtype": (stored.get("dtype"), ex.dtype),
        "extract.chunk_images": (stored.get("chunk_images"), ex.chunk_images),
        "extract.compression": (stored.get("compression", "lz4"), ex.compression),  # hashed only when not lz4
        "extract.shard_images": (stored.get("shard_images", 0), ex.shard_images),  # hashed only when not 0
        # hashed (resolved) only when not cpu; `auto` resolves by the extracting machine, so any store fits it
        "extract.decode": (
            stored.get("decode", "cpu"),
            stored.get("decode", "cpu") if ex.decode == "auto" else ex.decode,
        ),
        f"{d}.kind": (stored.get("dataset", {}).get("kind"), dataset.kind),
        f"{d}.root": (stored.get("dataset", {}).get("root"), str(dataset.root)),
        f"{d}.splits.{split}": (stored.get("dataset", {}).get("split"), dataset.splits[split]),
    }


def check_store(cfg: Config, ref: CacheRef, split: str) -> None:
    """Raise StaleInputError if the store of (ref, split) was extracted with other config values."""
    store = cfg.store(ref, split)
    meta = store / "zarr.json"
    if not meta.exists():
        return  # the reading step reports a missing store itself (CacheError naming it)
    attrs = json.loads(meta.read_text()).get("attributes", {})
    # a JSON round trip makes tuples lists on both sides
    pairs = {k: json.loads(json.dumps(v)) for k, v in store_expectation(cfg, ref, split, attrs).items()}
    diff = sorted(k for k, (was, now) in pairs.items() if was != now)
    if diff:
        shown = ", ".join(f"{k} ({json.dumps(pairs[k][0])} -> {json.dumps(pairs[k][1])})" for k in diff)
        raise StaleInputError(
            f"{store}: extracted with another config ({cfg.source} changed since: {shown}); rerun `extract` "
            "for it (snakemake reschedules it), after deleting the store or pointing paths.cache elsewhere"
        )


def check_inputs(cfg: Config, step: str, **keys: str) -> None:
    """Before ``step`` runs: every upstream output it reads was made from the current config."""
    if step not in STEPS or not STEPS[step].configured(cfg):
        return
    for up, up_keys in STEPS[step].upstream(cfg, keys):
        if up == "extract":
            check_store(cfg, CacheRef(up_keys["model"], up_keys["dataset"]), up_keys["split"])
        elif STEPS[up].output is not None:
            check_output(cfg, up, up_keys)


def check_cli_step(args: Any, cfg: Config) -> None:
    """``python -m pipeline STEP``: refuse upstream outputs made from another config before the
    step starts (``cfg``: the one loaded from ``--config``). Keys come from
    ``--model/--dataset/--split``; an SAE step given ``--out`` reads its inputs from that folder,
    which the config does not name, so only its stores are checked."""
    step = getattr(args, "step", None)
    if step is None or step not in STEPS:
        return
    keys = {k: getattr(args, k) for k in ("model", "dataset", "split") if getattr(args, k, None) is not None}
    if step.startswith("sae-") and getattr(args, "out", None) is not None:
        for up, up_keys in STEPS[step].upstream(cfg, keys):
            if up == "extract":
                check_store(cfg, CacheRef(up_keys["model"], up_keys["dataset"]), up_keys["split"])
        return
    check_inputs(cfg, step, **keys)


def check_weights(store_attrs: dict, model_provenance: dict, store: Path | str) -> None:
    """The model loaded now has the weights the store was extracted with (later blocks must match)."""
    stored = store_attrs.get("model", {}).get("weights_sha256")
    found = model_provenance.get("weights_sha256")
    if stored and found and stored != found:
        raise StaleInputError(
            f"{store}: extracted with model weights {stored[:12]}…, the model loaded now has {found[:12]}…; "
            "re-extract (snakemake reschedules it when the weights file changes)"
        )


def dataset_files_digest(root: str | Path) -> str:
    """A digest of every file under a dataset root: sha256 over each file's relative path, size
    and modification time (one ``stat`` per file, no content read), for the extraction rule's
    ``params``: editing, adding or removing an image (or mask) changes it, so Snakemake reruns the
    extraction, which then compares each image with its fingerprint in the store. Empty when the
    root does not exist (yet)."""
    root = Path(root)
    if not root.is_dir():
        return ""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return stable_hash(entries)


def weights_inputs(cfg: Config, model: str) -> list[str]:
    """A local model folder's ``config.json`` and weight files, as workflow inputs (a newer file
    reschedules extraction); nothing for a hub id (its revision is in the extraction's keys)."""
    folder = Path(str(cfg.model(model).spec.source)).expanduser()
    if not (folder / "config.json").is_file():
        return []
    try:
        return [str(folder / "config.json")] + [str(p) for p in weight_files(folder)]
    except FileNotFoundError:
        return [str(folder / "config.json")]
