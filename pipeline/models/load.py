"""Load a `ModelSpec` into a `Backbone`, with a provenance record of exactly what was loaded.

Where the weights come from:
  * `source` is an existing folder      -> `from_pretrained(folder)`;
  * `source` looks like a path          -> FileNotFoundError naming it (no hub lookup);
    (starts with '/', './', '../', '~', contains a backslash, or has more than one
    '/'; a single '/' is a hub id "namespace/name", so "contains os.sep" alone
    cannot mark a path on POSIX)
  * otherwise it is a hub id            -> `from_pretrained(source, revision=...)`,
    the ordinary HF hub path (download, or the local HF cache when offline). A
    failure is re-raised as OSError naming the source and revision.

Attention: "sdpa" (torch's scaled_dot_product_attention) wherever the HF class
declares support for it (every registered family does in transformers 5), else "eager".
Both compute the same attention; sdpa is faster and uses less memory.

Checkpoint keys: a checkpoint whose weights do not fit the architecture (keys the
model expects but the files lack, or keys the files have but the model does not use)
is refused with `ModelLoadError` naming the keys, instead of running on randomly
initialised parts. Only the family's documented harmless keys are allowed
(`Family.harmless_missing` / `harmless_unexpected`, e.g. CLIP's text tower in a full
CLIPModel checkpoint, or DINOv2's masked-pretraining `mask_token`).

Provenance keys: family, source, revision, commit (hub snapshot commit, None for
folders), resolved_path, weight_files, weights_sha256, n_blocks, d_model,
patch_size, image_size, n_cls_tokens, n_registers, n_prefix, image_readout,
hidden_act, random_weights, attn_implementation, dtype, model_class,
transformers_version, torch_version.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
import transformers
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .backbone import Backbone
from .family import Family
from .spec import ModelLoadError, ModelSpec, get_family, weight_files

RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.txt"
_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
_HASH_CHUNK = 1 << 20


class ModelSourceError(OSError):
    """A hub id that could not be loaded (no network, unknown id or revision)."""


def weights_sha256(folder: Path) -> str:
    """sha256 over the contents of `weight_files(folder)`, concatenated in name order.

    Only file contents enter the hash (not names, times or paths), so the same
    weights give the same hash wherever they are stored; hub snapshots are
    symlinks into the blob store and are followed.
    """
    digest = hashlib.sha256()
    for path in weight_files(folder):
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _looks_like_path(source: str) -> bool:
    if source.startswith(_PATH_PREFIXES) or "\\" in source or source.count("/") > 1:
        return True
    try:
        validate_repo_id(source)
    except HFValidationError:
        return True
    return False


def _local_folder(source: str) -> Path | None:
    """The folder `source` names, None if it is a hub id; errors for missing paths."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {source!r} has no config.json (not a save_pretrained folder)")
        return path.resolve()
    if path.exists():
        raise NotADirectoryError(f"model source {source!r} is a file; expected a save_pretrained folder or a hub id")
    if _looks_like_path(source):
        raise FileNotFoundError(f"model folder {source!r} does not exist")
    return None


def _attn_implementation(hf_class: type) -> str:
    return "sdpa" if getattr(hf_class, "_supports_sdpa", False) else "eager"


def _hub_snapshot(spec: ModelSpec) -> Path:
    """The cached snapshot folder from_pretrained just read for a hub id."""
    cached = try_to_load_from_cache(spec.source, "config.json", revision=spec.revision)
    if not isinstance(cached, str):
        raise OSError(
            f"loaded {spec.source!r} (revision {spec.revision!r}) from the hub but cannot find "
            "its snapshot in the local HF cache to hash the weights"
        )
    return Path(cached).parent


def check_checkpoint_keys(family: Family, loading_info: dict, where: str) -> None:
    """Refuse missing / unexpected checkpoint keys other than the family's harmless ones."""
    problems = []
    for kind, allowed in (("missing_keys", family.harmless_missing), ("unexpected_keys", family.harmless_unexpected)):
        bad = sorted(key for key in loading_info.get(kind) or () if not any(re.match(p, key) for p in allowed))
        if bad:
            shown = ", ".join(bad[:8]) + (f", … ({len(bad)} in all)" if len(bad) > 8 else "")
            problems.append(f"{kind.replace('_', ' ')}: {shown}")
    if problems:
        raise ModelLoadError(
            f"{where}: the checkpoint's weights do not fit {family.hf_class} (family {family.name!r}, "
            f"transformers {transformers.__version__}); {'; '.join(problems)}. Loaded anyway, the missing "
            "weights would be random and the unexpected ones ignored; check the family and the checkpoint"
        )


def load_backbone(
    spec: ModelSpec,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Backbone, dict]:
    """Load `spec` as a `Backbone` in eval mode on `device`/`dtype`, plus its provenance dict."""
    family = get_family(spec.family)
    hf_class = getattr(transformers, family.hf_class)
    attn = _attn_implementation(hf_class)
    kwargs = dict(family.load_kwargs, dtype=dtype, attn_implementation=attn, output_loading_info=True)

    folder = _local_folder(spec.source)
    if folder is not None:
        hf_model, loading_info = hf_class.from_pretrained(folder, **kwargs)
        resolved, commit = folder, None
    else:
        try:
            hf_model, loading_info = hf_class.from_pretrained(spec.source, revision=spec.revision, **kwargs)
        except (OSError, HFValidationError) as error:
            raise ModelSourceError(
                f"could not load {spec.family} model {spec.source!r} (revision {spec.revision!r}) "
                f"from the Hugging Face hub or its local cache (offline? download it once where there is "
                f"network, e.g. `hf download {spec.source} --local-dir DIR`, and set the model's source: DIR): "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from error
        resolved = _hub_snapshot(spec)
        commit = resolved.name

    check_checkpoint_keys(family, loading_info, f"model {spec.source!r}")
    backbone = Backbone(spec.family, hf_model.to(device))
    config = hf_model.config
    provenance = {
        "family": spec.family,
        "source": spec.source,
        "revision": spec.revision,
        "commit": commit,
        "resolved_path": str(resolved),
        "weight_files": [path.name for path in weight_files(resolved)],
        "weights_sha256": weights_sha256(resolved),
        "n_blocks": backbone.n_blocks,
        "d_model": backbone.d_model,
        "patch_size": backbone.patch_size,
        "image_size": backbone.image_size,
        "n_cls_tokens": backbone.n_cls,
        "n_registers": backbone.n_registers,
        "n_prefix": backbone.n_prefix,
        "image_readout": backbone.image_readout,
        "hidden_act": getattr(config, "hidden_act", None),
        "random_weights": (resolved / RANDOM_WEIGHTS_MARKER).is_file(),
        "attn_implementation": attn,
        "dtype": str(dtype).removeprefix("torch."),
        "model_class": type(hf_model).__name__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    return backbone, provenance
