"""What model to load: the family, where its weights live, and its default preprocessing.

A `ModelSpec` names one of the registered `FAMILIES` and a `source`, which is either
a local folder written by `save_pretrained` or a Hugging Face hub id. The family
decides which HF class is used and how the residual stream is read out of it; the
families and their facts live in `pipeline.models.families` (one module each).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.models.families import FAMILY_REGISTRY
from pipeline.models.family import Family

FAMILIES = tuple(FAMILY_REGISTRY)  # the families shipped with the package (FAMILY_REGISTRY: every registered one)


class ModelLoadError(ValueError):
    """A checkpoint that does not fit its family's architecture (names the folder and the keys)."""


def check_family(family: str) -> str:
    """Return `family` unchanged if it is a registered family, else raise ValueError naming it."""
    if family not in FAMILY_REGISTRY:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILY_REGISTRY)}")
    return family


def get_family(family: str) -> Family:
    """The registered `Family` named `family` (ValueError naming it if unknown)."""
    return FAMILY_REGISTRY[check_family(family)]


@dataclass(frozen=True)
class ModelSpec:
    """A model to load.

    family:   one of `FAMILIES`.
    source:   a local folder (written by `save_pretrained`) or a hub id such as
              "facebook/dinov2-small".
    revision: hub branch, tag or commit; ignored for local folders.
    """

    family: str
    source: str
    revision: str | None = None

    def __post_init__(self) -> None:
        check_family(self.family)
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"ModelSpec.source must be a non-empty string, got {self.source!r}")


def default_preprocess(family: str) -> dict:
    """Default image preprocessing for a family (the one its checkpoints were trained with).

    Returns a dict with keys: resize (shorter side, px), crop (centre crop, px),
    mean and std (per RGB channel, for pixels in [0, 1]) and interpolation.
    """
    return dict(get_family(family).preprocess)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a saved model: *.safetensors, else *.bin, sorted by name.

    Here, not in ``load``, so the workflow can list them as inputs without importing torch.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"), key=lambda p: p.name)
    if not files:
        files = sorted(folder.glob("*.bin"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no *.safetensors or *.bin weight files in {str(folder)!r}")
    return files
