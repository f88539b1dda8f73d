"""What an intervention method is: a name and a rule that picks one class's edit.

Dimension key: S SAE latents, D model width, K latents in one edit.

A method is one :class:`Method` record: its ``name`` (the config's ``quantify.methods``
spelling and the ``method`` column of ``quantitative.csv``) and ``choose(ctx, class_id, rng)``,
which returns the class's :class:`Chosen` edit or a :class:`Skipped` reason. ``rng`` is seeded
by :func:`method_seed` from the config's seed, the class id and the method's NAME, so adding
or reordering methods never changes another method's draws.

Only numpy here (no torch): the config reads the registered names for its schema.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Edit:
    """One intervention: latents set to values, or (``vector`` given) a vector added."""

    latents: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    vector: np.ndarray | None = None  # [D], model space

    def __post_init__(self) -> None:
        if len(self.latents) != len(self.values):
            raise ValueError(f"edit has {len(self.latents)} latents but {len(self.values)} values")
        if (self.vector is not None) == bool(self.latents):
            raise ValueError("an edit is either latents (with values) or a vector, not both or neither")


@dataclass(frozen=True)
class Chosen:
    """A method's edit for one class, with the label and note its table row shows."""

    edit: Edit
    label: str  # latent ids ("12", "3+7") or "random vector"
    note: str = ""


@dataclass(frozen=True)
class Skipped:
    """A class a method cannot edit, and why."""

    reason: str


@dataclass(frozen=True)
class MethodContext:
    """What every method may read: the SAE's train statistics, the F1 table and the config.

    ``max_value_S`` / ``freq_S``: max observed value and firing frequency of each latent on
    the train split; ``f1``: the class–latent F1 table (``class_f1.zarr``); ``manual``: class
    id → latents named in ``quantify.manual``; ``vector_norm``: the random-vector norm (model
    space); ``scale``: edit value = ``scale`` × max observed value.
    """

    scale: float
    max_value_S: np.ndarray
    freq_S: np.ndarray
    max_firing_fraction: float
    f1: object  # xarray Dataset with f1[class, latent, threshold] (only read by F1-based methods)
    manual: Mapping[int, tuple[int, ...]]
    vector_norm: float
    d_model: int

    @property
    def live_S(self) -> np.ndarray:
        """Ids of the latents that fire on the train split."""
        return np.flatnonzero(self.freq_S > 0)

    @property
    def allowed_S(self) -> np.ndarray:
        """[S] bool: latents an F1-based method may pick (see :func:`allowed_latents`)."""
        return allowed_latents(self.freq_S, self.max_firing_fraction)

    def value(self, latent: int) -> float:
        """The edit value of a feature edit: ``scale`` × the latent's max observed value on train."""
        return float(self.scale * self.max_value_S[latent])


@dataclass(frozen=True)
class Method:
    """One registered intervention method."""

    name: str
    choose: Callable[[MethodContext, int, np.random.Generator], Chosen | Skipped]
    summary: str  # one line for docs and --help


def method_seed(name: str) -> int:
    """A stable number for a method name (CRC-32 of its UTF-8 bytes; not Python's salted ``hash``)."""
    return zlib.crc32(name.encode("utf-8"))


def method_rng(seed: int, class_id: int, name: str) -> np.random.Generator:
    """The generator a method draws from for one class: seeded by (config seed, class, method name)."""
    return np.random.default_rng([seed, class_id, method_seed(name)])


def registry(*methods: Method) -> dict[str, Method]:
    """Name → method, refusing a name registered twice."""
    out: dict[str, Method] = {}
    for m in methods:
        if m.name in out:
            raise ValueError(f"intervention method {m.name!r} is registered twice")
        out[m.name] = m
    return out


# ---- choosing latents by train F1 (shared by auto_feature, zero_ablation, proposals, manipulate) ----
def allowed_latents(freq_S: np.ndarray, max_firing_fraction: float) -> np.ndarray:
    """Latents that fire at all and on at most ``max_firing_fraction`` of train patches."""
    return (freq_S > 0) & (freq_S <= max_firing_fraction)


def ranked_latents(f1, class_id: int, allowed_S: np.ndarray, n: int) -> list[tuple[int, float, float]]:
    """Top ``n`` ``(latent, threshold, F1)`` for a class by best F1 over thresholds (``f1``: the F1 dataset)."""
    table = f1["f1"].sel({"class": class_id}).values  # [S, Θ]
    best_S = np.where(allowed_S, table.max(1), -np.inf)
    best_t = f1["threshold"].values[table.argmax(1)]
    order = np.argsort(-best_S, kind="stable")[:n]
    return [(int(s), float(best_t[s]), float(best_S[s])) for s in order if np.isfinite(best_S[s])]
