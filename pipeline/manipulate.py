"""Look and play: set SAE latents on one cached image and see the probe's prediction change.

saev's classification dashboard and semseg demo, from the cache: nothing before block ``l``
(``sae.layer``) is ever run. For one image of a split the :class:`Manipulator` reads block
``l``'s cached output, encodes the edited tokens with the SAE (with its stored input
scaling), sets chosen latents to chosen values keeping the SAE's error term
(:class:`pipeline.interventions.LatentEditor`), and re-runs blocks ``l+1 … N−1``, the final
norm and the probe. Baseline ("before") predictions come from the same re-forward path on the
unedited acts, so before and after differ only by the edit.

Tasks (the task of the SAE's cache decides):

* segmentation — the patch tokens are edited (every patch of the image), the best
  segmentation probe (``probes.seg``, same cache, ``layer: -1``) reads the patch tokens;
  predictions are the argmax over the real classes 1 … C−1 (as the probe stage);
* classification — an SAE trained with ``tokens: patches+cls`` on a classification cache;
  the CLS token is edited and the best classification probe (``probes.cls``, same cache,
  ``layer: -1``) reads the final CLS token.

Values. An edit value ``u`` is given in [−1, 1] and sets latent ``s`` to ``u · max_s``, where
``max_s`` is the largest value of ``f_s`` observed on the TRAIN split (``latents.zarr``
``max_value``, over the train patch tokens; for classification also over the train CLS
tokens). saev used a hard-coded 100 whatever the latent's scale.

Ranking a class's latents (``manipulate.rank_by``):

* ``f1`` — the train F1 of "latent fires" vs "patch has class c" (``class_f1.zarr`` of the
  quantify stage; segmentation only), best over thresholds, among latents that fire;
* ``activation`` — the mean latent value over this image's tokens of class c (segmentation:
  patches labelled c, else patches predicted c; classification: the CLS token when the image
  is of class c); when the image has no such token, the class specificity on TRAIN: mean f
  over the train tokens of class c minus mean f over the other train tokens (one streamed
  pass over the train store, computed once; a plain class mean would rank the latents that
  fire on everything first);
* ``auto`` — ``f1`` when the table exists (segmentation), else ``activation``.

Every row says which score it is (``score_kind``) and shows the latent's value on this image
(mean over the class's tokens and max over the edited tokens), zeros included.

Outputs of :func:`run_example` in ``<results>/manipulate/<name>/``: ``latents.csv`` (train
firing frequency and F1 scores in percent, as every table: :mod:`pipeline.units`),
``probabilities.csv`` (class probabilities before / after in percent; segmentation: mean over
patches of the softmax over real classes, plus patch counts), ``probabilities.{html,png,svg}`` (bars,
before vs after), ``maps.png`` (segmentation: image | before | after with a legend; changed
patches outlined) and ``summary.json``.

Dimension key: T tokens, P patches (or 1 CLS token for classification), D width, S latents,
K edited latents, C classes, H/W pixels.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from pipeline.cache import CacheReader
from pipeline.config import Config, ConfigError, ManipulateConfig, ManipulateExample
from pipeline.interventions import Edit, LatentEditor
from pipeline.layout import MANIPULATE_FILES, manipulate_dir, manipulate_files
from pipeline.layout import probe_stem as layout_probe_stem
from pipeline.probe_kinds import kind_for_task
from pipeline.probe_kinds import probe_section as probe_section_of

log = logging.getLogger(__name__)

__all__ = [
    "EditResult",
    "ManipulateError",
    "Manipulator",
    "before_after_image",
    "example_outputs",
    "probability_bars",
    "probability_chart",
    "probability_table",
    "run_example",
]

RANK_BY = ("auto", "f1", "activation")
FILES = MANIPULATE_FILES  # per task (pipeline.layout owns the list)


class ManipulateError(ConfigError):
    """A manipulate request that does not fit the config, the store or the SAE (names what)."""


out_dir = manipulate_dir  # ``<results>/manipulate/<name>`` (pipeline.layout)


def example_outputs(cfg: Config, name: str) -> list[Path]:
    """The files :func:`run_example` writes for an example of this config's task."""
    _require_sae(cfg)
    return manipulate_files(cfg, name)


def _require_sae(cfg: Config):
    if cfg.sae is None:
        raise ManipulateError(f"{cfg.source}: key sae: missing; manipulate edits the latents of the configured SAE")
    return cfg.sae


def probe_section(cfg: Config):
    """The probe that reads what the SAE's cache is for: ``probes.seg`` or ``probes.cls``."""
    sc = _require_sae(cfg)
    task = cfg.dataset(sc.cache.dataset).task
    kind = kind_for_task(task)
    key, section = kind.key, probe_section_of(cfg, kind.name)
    if section is None:
        raise ManipulateError(f"{cfg.source}: key {key}: missing; manipulate on a {task} SAE needs that probe")
    if section.cache != sc.cache:
        raise ManipulateError(f"{cfg.source}: key {key}/cache must name the SAE's cache ({sc.cache.model}, {sc.cache.dataset}) for manipulate")
    if section.layer != -1:
        raise ManipulateError(f"{cfg.source}: key {key}/layer must be -1 (the final representation) for manipulate")
    if task == "classification" and sc.tokens != "patches+cls":
        raise ManipulateError(f"{cfg.source}: key sae/tokens must be patches+cls to edit CLS tokens on a classification cache")
    return section


def probe_stem(cfg: Config) -> Path:
    task = cfg.dataset(_require_sae(cfg).cache.dataset).task
    return layout_probe_stem(cfg, kind_for_task(task).name)


@dataclass
class EditResult:
    """Predictions of one image before and after an edit."""

    probs_before_C: np.ndarray
    probs_after_C: np.ndarray
    pred_before: np.ndarray  # [P] (segmentation) or [1]
    pred_after: np.ndarray
    latents: tuple[int, ...] = ()
    unit_values: tuple[float, ...] = ()
    target_values: tuple[float, ...] = ()

    @property
    def n_changed(self) -> int:
        return int((self.pred_before != self.pred_after).sum())

    def counts(self, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.bincount(self.pred_before, minlength=n_classes), np.bincount(self.pred_after, minlength=n_classes))

    def map_hash(self) -> str:
        """A short hash of the edited prediction (what the app prints, so a change is visible)."""
        return hashlib.sha256(np.ascontiguousarray(self.pred_after.astype(np.int64)).tobytes()).hexdigest()[:12]


@dataclass
class ImageState:
    """One image's cached block-l acts, its latents and its baseline prediction."""

    split: str
    index: int
    image_id: str
    acts_1TD: torch.Tensor
    f_PS: torch.Tensor  # latents of the edited tokens (patches, or the CLS token)
    logits_before: torch.Tensor
    probs_before_C: np.ndarray
    pred_before: np.ndarray
    labels: np.ndarray | None  # patch labels [P] (segmentation) or [label] (classification)
    extra: dict[str, Any] = field(default_factory=dict)


class Manipulator:
    """Everything loaded once (model, SAE, probe, latent statistics, stores); one re-forward per edit."""

    def __init__(self, cfg: Config, *, device: str | torch.device | None = None):
        from pipeline.feature_selection import load_f1
        from pipeline.models import load_backbone
        from pipeline.layout import class_f1_path, sae_dir
        from pipeline.probes import load_probe
        from pipeline.runtime import resolve_device
        from pipeline.sae import load_latent_stats
        from pipeline.sae.stages import load_sae_for, trained_block

        self.cfg = cfg
        self.settings = cfg.manipulate or ManipulateConfig()
        if self.settings.rank_by not in RANK_BY:
            raise ManipulateError(f"{cfg.source}: key manipulate/rank_by: {self.settings.rank_by!r} is not one of {', '.join(RANK_BY)}")
        sc = _require_sae(cfg)
        self.task = cfg.dataset(sc.cache.dataset).task
        probe_section(cfg)
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        self._readers: dict[str, CacheReader] = {}
        train = self.reader("train")
        self.block = train.block(sc.layer)
        self.n_prefix = train.n_prefix
        if self.task == "classification" and not train.n_cls:
            raise ManipulateError(f"{train.path}: the model has no CLS token to edit; manipulate on a classification cache edits CLS tokens")
        self.class_names = train.class_names
        self.n_classes = train.n_classes
        self.random_weights = train.random_weights

        self.sae_path = sae_dir(cfg) / "sae.pt"
        if not self.sae_path.exists():
            raise FileNotFoundError(f"{self.sae_path}: no SAE checkpoint; run sae-train first")
        sae, self.sae_cfg, self.scaling = load_sae_for(cfg, self.sae_path, train)
        trained = trained_block(self.sae_cfg)
        if trained is not None and trained != self.block:
            raise ManipulateError(f"{self.sae_path}: trained on block {trained}, sae.layer is block {self.block}")
        self.sae = sae.to(self.device).eval()
        self.n_latents = int(self.sae.W_enc.shape[1])
        latents_path = sae_dir(cfg) / "latents.zarr"
        if not latents_path.exists():
            raise FileNotFoundError(f"{latents_path}: no latent statistics; run sae-latents first")
        stats = load_latent_stats(latents_path)
        self.max_value_S = np.asarray(stats["max_value"].values, dtype=np.float64)
        self.freq_S = np.asarray(stats["freq"].values, dtype=np.float64)
        self.max_value_note = "max f over the train patch tokens (latents.zarr)"
        f1_path = class_f1_path(cfg)
        self.f1 = load_f1(f1_path) if self.task == "segmentation" and f1_path.exists() else None
        if self.settings.rank_by == "f1" and self.f1 is None:
            why = "classification has no class-F1 table (it is made from patch labels)" if self.task != "segmentation" else f"{f1_path} does not exist (run class-f1)"
            raise ManipulateError(f"{cfg.source}: key manipulate/rank_by: f1, but {why}")
        self.rank_by = ("f1" if self.f1 is not None else "activation") if self.settings.rank_by == "auto" else self.settings.rank_by

        self.backbone, self.model_provenance = load_backbone(cfg.model(sc.cache.model).spec, device=self.device)
        stored = train.attrs.get("model", {}).get("weights_sha256")
        if stored and stored != self.model_provenance["weights_sha256"]:
            raise ManipulateError(f"{train.path}: made with model weights {stored[:12]}…, models/{sc.cache.model} now has "
                                  f"{self.model_provenance['weights_sha256'][:12]}…; the later blocks would not match the cache")
        self.probe_stem = probe_stem(cfg)
        probe, self.probe_meta = load_probe(self.probe_stem)
        if probe.out_features != self.n_classes or probe.in_features != train.d_model:
            raise ManipulateError(f"{self.probe_stem}: probe is Linear({probe.in_features}, {probe.out_features}), "
                                  f"the store has D={train.d_model}, {self.n_classes} classes")
        self.probe = probe.to(self.device).eval()
        self.real_classes_only = self.task == "segmentation" and not self.probe_meta.get("probe_config", {}).get("train_on_other", False)
        # segmentation edits the patch tokens; classification edits the CLS token (a 1-token "image")
        self.editor = LatentEditor(self.sae, self.scaling, n_prefix=self.n_prefix if self.task == "segmentation" else 0)
        self._class_means_CS: np.ndarray | None = None
        if self.task == "classification":
            _, cls_max = self._train_class_means()
            self.max_value_S = np.maximum(self.max_value_S, cls_max)
            self.max_value_note = "max f over the train patch and CLS tokens"

    # ------------------------------------------------------------------ stores and images
    def reader(self, split: str) -> CacheReader:
        if split not in self._readers:
            ref = _require_sae(self.cfg).cache
            self._readers[split] = CacheReader(self.cfg.store(ref, split))
        return self._readers[split]

    def image_ids(self, split: str = "val") -> list[str]:
        r = self.reader(split)
        return [str(i) for i, ok in zip(r.image_ids, r.valid) if ok]

    def image_index(self, split: str, image: str | int) -> int:
        """Index into the split of an image id or index (a valid image)."""
        r = self.reader(split)
        if isinstance(image, (int, np.integer)) or (isinstance(image, str) and image.isdigit() and image not in set(map(str, r.image_ids))):
            idx = int(image)
            if not 0 <= idx < r.n_images:
                raise ManipulateError(f"{r.path}: image index {idx} is outside [0, {r.n_images})")
        else:
            ids = [str(i) for i in r.image_ids]
            if image not in ids:
                raise ManipulateError(f"{r.path}: no image {image!r} (ids look like {ids[0]!r})")
            idx = ids.index(image)
        if not r.valid[idx]:
            raise ManipulateError(f"{r.path}: image {idx} ({r.image_ids[idx]}) is not a valid image (not done, or bad)")
        return idx

    def class_id(self, spec: str | int | None, what: str = "class") -> int | None:
        if spec is None:
            return None
        names = list(self.class_names)
        if isinstance(spec, str) and not spec.isdigit():
            if spec not in names:
                raise ManipulateError(f"{self.cfg.source}: {what} {spec!r} is not a class name; classes: {', '.join(names)}")
            c = names.index(spec)
        else:
            c = int(spec)
        lo = 1 if self.real_classes_only else 0
        if not lo <= c < self.n_classes:
            raise ManipulateError(f"{self.cfg.source}: {what} {spec!r}: class id must be in [{lo}, {self.n_classes})")
        return c

    # ------------------------------------------------------------------ model pieces
    @torch.no_grad()
    def encode(self, acts_1TD: torch.Tensor) -> torch.Tensor:
        """All latents on the edited tokens: [P, S] (patches) or [1, S] (CLS)."""
        x = acts_1TD[0, self.n_prefix:] if self.task == "segmentation" else acts_1TD[0, :1]
        return self.sae.encode(self.scaling.apply(x.float()))

    @torch.no_grad()
    def logits(self, acts_1TD: torch.Tensor) -> torch.Tensor:
        """Re-forward from block l: [P, C] patch logits or [1, C] CLS logits."""
        from pipeline.runtime import forward_precision

        with forward_precision(self.reader("train").attrs.get("forward_dtype", "float32"), self.device):  # the store's precision
            final = self.backbone.forward_from(self.block, acts_1TD.to(self.device, self.backbone.dtype))
        tokens = final[0, self.n_prefix:] if self.task == "segmentation" else final[0, :1]
        return self.probe(tokens.float())

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """[C]: segmentation, the mean over patches of the softmax over the classes the probe predicts."""
        if self.real_classes_only:
            p = torch.zeros_like(logits)
            p[:, 1:] = logits[:, 1:].softmax(-1)
        else:
            p = logits.softmax(-1)
        return p.mean(0).cpu().numpy().astype(np.float64)

    def predict(self, logits: torch.Tensor) -> np.ndarray:
        if self.real_classes_only:
            return (logits[:, 1:].argmax(-1) + 1).cpu().numpy()
        return logits.argmax(-1).cpu().numpy()

    @torch.no_grad()
    def edited_acts(self, acts_1TD: torch.Tensor, latents: tuple[int, ...], unit_values: tuple[float, ...]) -> torch.Tensor:
        """acts with ``latents`` set to ``unit · max_s`` on the edited tokens (float32)."""
        targets = self.target_values(latents, unit_values)
        if not latents:
            return acts_1TD.float()
        if self.task == "segmentation":
            return self.editor.apply(acts_1TD, Edit(tuple(latents), targets))
        out = acts_1TD.float().clone()
        out[:, :1] += self.editor.set_latents(acts_1TD[:, :1], tuple(latents), targets)
        return out

    def target_values(self, latents: tuple[int, ...], unit_values: tuple[float, ...]) -> tuple[float, ...]:
        if len(latents) != len(unit_values):
            raise ManipulateError(f"{len(unit_values)} values for {len(latents)} latents")
        for s in latents:
            if not 0 <= int(s) < self.n_latents:
                raise ManipulateError(f"{self.sae_path}: latent {s} does not exist (the SAE has {self.n_latents} latents: 0..{self.n_latents - 1})")
        for u in unit_values:
            if not -1.0 <= float(u) <= 1.0:
                raise ManipulateError(f"value {u} is outside [-1, 1] (values are fractions of the latent's max observed value on train)")
        return tuple(float(u) * float(self.max_value_S[int(s)]) for s, u in zip(latents, unit_values))

    # ------------------------------------------------------------------ one image
    @torch.no_grad()
    def load_image(self, split: str, image: str | int) -> ImageState:
        idx = self.image_index(split, image)
        r = self.reader(split)
        acts = torch.from_numpy(np.asarray(r.read(self.block, idx, idx + 1), dtype=np.float32)).to(self.device)
        logits = self.logits(acts)
        if self.task == "segmentation":
            labels = np.asarray(r.group["patch_label"][idx], dtype=np.int64) if "patch_label" in r.group else None
        else:
            labels = np.asarray(r.group["label"][idx : idx + 1], dtype=np.int64) if "label" in r.group else None
        return ImageState(split, idx, str(r.image_ids[idx]), acts, self.encode(acts), logits,
                          self.probabilities(logits), self.predict(logits), labels)

    @torch.no_grad()
    def apply(self, state: ImageState, latents: tuple[int, ...] = (), unit_values: tuple[float, ...] = ()) -> EditResult:
        """One re-forward of the image with the latents set; the before side is the cached baseline."""
        latents = tuple(int(s) for s in latents)
        unit_values = tuple(float(u) for u in unit_values)
        targets = self.target_values(latents, unit_values)
        if latents:
            logits = self.logits(self.edited_acts(state.acts_1TD, latents, unit_values))
            probs, pred = self.probabilities(logits), self.predict(logits)
        else:
            probs, pred = state.probs_before_C, state.pred_before
        return EditResult(state.probs_before_C, probs, state.pred_before, pred, latents, unit_values, targets)

    # ------------------------------------------------------------------ choosing classes and latents
    def default_classes(self, state: ImageState, target: int | None, other: int | None) -> tuple[int, int]:
        """The image's class (most frequent label; else most frequent prediction) and another class."""
        lo = 1 if self.real_classes_only else 0
        if self.task == "segmentation":
            order = []
            for source in (state.labels, state.pred_before):
                if source is None:
                    continue
                counts = np.bincount(source[source >= lo], minlength=self.n_classes)
                order += [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0 and c >= lo]
        else:
            order = ([int(state.labels[0])] if state.labels is not None and state.labels[0] >= 0 else [])
            order += [int(c) for c in np.argsort(-state.probs_before_C, kind="stable")]
        order = list(dict.fromkeys(order + list(range(lo, self.n_classes))))
        target = order[0] if target is None else target
        if other is None:
            other = next(c for c in order if c != target)
        if other == target:
            raise ManipulateError(f"class and other_class are the same class ({self.class_names[target]})")
        return target, other

    def _class_tokens(self, state: ImageState, c: int) -> tuple[np.ndarray, str]:
        """Which of the image's edited tokens belong to class c, and how that was decided."""
        if self.task == "classification":
            mask = np.array([state.labels is not None and int(state.labels[0]) == c])
            return mask, "the image's CLS token (image labelled c)"
        if state.labels is not None and (state.labels == c).any():
            return state.labels == c, "this image's patches labelled c"
        if (state.pred_before == c).any():
            return state.pred_before == c, "this image's patches predicted c"
        return np.zeros(len(state.pred_before), dtype=bool), ""

    @torch.no_grad()
    def _train_class_means(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean f per class over the TRAIN tokens of that class [C, S] (and, for CLS, max f [S])."""
        r = self.reader("train")
        sums = torch.zeros(self.n_classes, self.n_latents, dtype=torch.float64, device=self.device)
        counts = torch.zeros(self.n_classes, dtype=torch.float64, device=self.device)
        cls_max = torch.zeros(self.n_latents, device=self.device)
        if self.task == "segmentation":
            labels_NP = r.labels("patch_label").astype(np.int64)
            tokens = "patches"
        else:
            labels_NP = r.labels("label").astype(np.int64)[:, None]
            tokens = "cls"
        for image_B, acts_BTD in r.iter_chunks(self.block, tokens=tokens):
            b, t, d = acts_BTD.shape
            x = torch.from_numpy(np.asarray(acts_BTD, dtype=np.float32).reshape(b * t, d)).to(self.device)
            f_NS = self.sae.encode(self.scaling.apply(x))
            y_N = torch.from_numpy(labels_NP[image_B].reshape(-1)).to(self.device)
            keep = (y_N >= 0) & (y_N < self.n_classes)
            sums.index_add_(0, y_N[keep], f_NS[keep].double())
            counts += torch.bincount(y_N[keep], minlength=self.n_classes).double()
            cls_max = torch.maximum(cls_max, f_NS.amax(0))
        n_C = counts.cpu().numpy()
        means = (sums / counts.clamp_min(1)[:, None]).float().cpu().numpy()
        rest = ((sums.sum(0, keepdim=True) - sums) / (counts.sum() - counts).clamp_min(1)[:, None]).float().cpu().numpy()
        means[n_C == 0] = np.nan
        # class specificity: mean f on the class's train tokens minus mean f on the other classes' train tokens
        self._class_means_CS = means - rest
        return means, cls_max.cpu().numpy().astype(np.float64)

    def class_means(self) -> np.ndarray:
        """[C, S]: mean f on the train tokens labelled c minus mean f on the other train tokens (NaN: no token of c)."""
        if self._class_means_CS is None:
            self._train_class_means()
        return self._class_means_CS

    def rank_latents(self, state: ImageState, c: int, n: int | None = None) -> pd.DataFrame:
        """The top ``n`` latents of class ``c`` for this image, with their values on it (zeros included)."""
        from pipeline.feature_selection import ranked_latents

        n = n or self.settings.n_top_latents
        f_PS = state.f_PS.cpu().numpy()
        mask, where = self._class_tokens(state, c)
        on_image = f_PS[mask].mean(0) if mask.any() else np.zeros(self.n_latents)
        if self.rank_by == "f1":
            ranked = ranked_latents(self.f1, c, self.freq_S > 0, n)
            latents = [s for s, _, _ in ranked]
            scores = [100.0 * score for _, _, score in ranked]  # percent, as every table (pipeline.units)
            kinds = [f"train F1 in % (latent > {t:g} vs patch labelled c)" for _, t, _ in ranked]
        else:
            if mask.any():
                score_S, kind = on_image, f"mean f on {where}"
            else:
                score_S = np.nan_to_num(self.class_means()[c], nan=0.0)
                kind = "mean f on train tokens labelled c minus on the other train tokens (the image has none)"
            order = np.argsort(-score_S, kind="stable")[:n]
            latents, scores, kinds = [int(s) for s in order], [float(score_S[s]) for s in order], [kind] * len(order)
        rows = []
        for rank, (s, score, kind) in enumerate(zip(latents, scores, kinds), start=1):
            rows.append({
                "class_id": c,
                "class_name": self.class_names[c],
                "rank": rank,
                "latent": s,
                "score": score,
                "score_kind": kind,
                "value_on_class_tokens": float(on_image[s]) if mask.any() else float("nan"),
                "value_max_on_image": float(f_PS[:, s].max()),
                "train_max": float(self.max_value_S[s]),
                "train_freq_pct": 100.0 * float(self.freq_S[s]),
            })
        return pd.DataFrame(rows)

    def top_classes(self, probs_C: np.ndarray, n: int | None = None) -> list[tuple[int, str, float]]:
        n = n or self.settings.n_top_classes
        lo = 1 if self.real_classes_only else 0
        order = [int(c) for c in np.argsort(-probs_C, kind="stable") if c >= lo][:n]
        return [(c, self.class_names[c], float(probs_C[c])) for c in order]

    def readout(self, result: EditResult) -> str:
        """One line that names the prediction (what the app shows and the browser test reads)."""
        if self.task == "segmentation":
            _, after = result.counts(self.n_classes)
            parts = [f"{self.class_names[c]}={int(after[c])}" for c in np.flatnonzero(after)]
            return f"patches per predicted class: {', '.join(parts)}; changed {result.n_changed}/{len(result.pred_after)}; map {result.map_hash()}"
        c = int(result.pred_after[0])
        return f"predicted class: {self.class_names[c]} ({result.probs_after_C[c]:.1%}); changed {result.n_changed}/1; probs {result.map_hash()}"

    # ------------------------------------------------------------------ pictures
    def image_rgb(self, state: ImageState) -> np.ndarray | None:
        """The image as the model saw it (uint8 [H, W, 3]), or None where the dataset cannot be read."""
        from pipeline.sae.stages import store_image_loader

        try:
            return np.asarray(store_image_loader(self.reader(state.split))(state.index).convert("RGB"))
        except Exception as err:  # noqa: BLE001  (a picture is optional: the numbers do not need it)
            log.warning("cannot read image %s for the figure: %s", state.image_id, err)
            return None


# ---------------------------------------------------------------------- figures
def probability_bars(table: pd.DataFrame, *, title: str, random_weights: bool, subtitle: list[str] | None = None) -> alt.Chart:
    """Horizontal bars: each class's probability before and after the edit (``prob_*_pct``, percent)."""
    from pipeline.plots import OKABE_ITO, RANDOM_WEIGHTS_NOTE

    long = table.melt(id_vars=["class_name"], value_vars=["prob_before_pct", "prob_after_pct"], var_name="state", value_name="probability")
    long["state"] = long["state"].map({"prob_before_pct": "before", "prob_after_pct": "after"})
    order = table.sort_values("prob_before_pct", ascending=False)["class_name"].tolist()
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", title="probability (%)", axis=alt.Axis(values=[0, 25, 50, 75, 100]),
                    scale=alt.Scale(domain=[0, 100])),
            y=alt.Y("class_name:N", sort=order, title="class"),
            yOffset=alt.YOffset("state:N", sort=["before", "after"]),
            color=alt.Color("state:N", sort=["before", "after"], title="prediction",
                            scale=alt.Scale(domain=["before", "after"], range=[OKABE_ITO[1], OKABE_ITO[5]])),
            tooltip=[alt.Tooltip("class_name:N", title="class"), alt.Tooltip("state:N", title="prediction"),
                     alt.Tooltip("probability:Q", format=".1f", title="probability (%)")],
        )
        .properties(width=360, height=alt.Step(12),
                    title=alt.TitleParams(title, subtitle=([RANDOM_WEIGHTS_NOTE] if random_weights else []) + (subtitle or [])))
    )


def probability_chart(table: pd.DataFrame, stem: Path, *, title: str, random_weights: bool, subtitle: list[str] | None = None) -> list[Path]:
    """:func:`probability_bars` saved as ``stem.html``, ``.png`` and ``.svg``."""
    from pipeline.plots import save_chart

    return save_chart(probability_bars(table, title=title, random_weights=random_weights, subtitle=subtitle), stem)


def _grid(mask_P: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    return np.asarray(mask_P).reshape(grid)


def before_after_image(
    image: np.ndarray | None,
    before_P: np.ndarray,
    after_P: np.ndarray,
    grid: tuple[int, int],
    class_names: tuple[str, ...] | list[str],
    *,
    title: str,
    lines: list[str] = (),
    random_weights: bool = False,
    min_size: int = 224,
) -> Image.Image:
    """image | before | after (patch maps in class colours, changed patches outlined) + legend."""
    from pipeline.plots import OKABE_ITO, RANDOM_WEIGHTS_NOTE
    from pipeline.probes.figures import LEGEND_TITLE, _font, _hex_rgb, class_colours

    rows, cols = grid
    colours = class_colours(len(class_names), class_names)
    side = max(min_size, image.shape[0] if image is not None else 0)
    cell = max(1, side // rows)
    side = cell * rows
    maps = [_grid(before_P, grid), _grid(after_P, grid)]
    changed = maps[0] != maps[1]
    panels = []
    if image is not None:
        panels.append(("image", Image.fromarray(image).resize((cell * cols, side), Image.BICUBIC)))
    for name, m in (("before", maps[0]), ("after (changed patches outlined)", maps[1])):
        rgb = colours[m].repeat(cell, 0).repeat(cell, 1)
        panels.append((name, Image.fromarray(np.ascontiguousarray(rgb))))
    pad, font, small, line = 8, _font(16), _font(13), 20
    header = [title] + ([RANDOM_WEIGHTS_NOTE] if random_weights else []) + list(lines)
    present = sorted(set(np.unique(maps[0]).tolist()) | set(np.unique(maps[1]).tolist()))
    labels = [f"{k} {class_names[k]}" for k in present]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = pad + len(panels) * (cell * cols + pad)
    width = max(width, max(int(probe.textlength(s, font=font if i == 0 else small)) for i, s in enumerate(header)) + 2 * pad)
    entry_w = 14 + 6 + max(int(probe.textlength(s, font=small)) for s in labels) + 16
    n_cols = max(1, (width - 2 * pad) // entry_w)
    legend_rows = -(-len(labels) // n_cols)
    top = pad + line * len(header) + pad + line
    height = top + side + pad + line + legend_rows * 18 + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for i, text in enumerate(header):
        colour = (0, 0, 0) if i == 0 else (_hex_rgb(OKABE_ITO[5]) if random_weights and i == 1 else (40, 40, 40))
        draw.text((pad, y), text, fill=colour, font=font if i == 0 else small)
        y += line
    x = pad
    for name, panel in panels:
        draw.text((x, top - line), name, fill=(0, 0, 0), font=small)
        canvas.paste(panel, (x, top))
        if name.startswith("after"):
            for r, c in zip(*np.nonzero(changed)):
                box = (x + c * cell, top + r * cell, x + (c + 1) * cell - 1, top + (r + 1) * cell - 1)
                draw.rectangle(box, outline=(255, 255, 255), width=max(1, cell // 10))
                draw.rectangle((box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1), outline=(0, 0, 0), width=1)
        x += cell * cols + pad
    y = top + side + pad
    draw.text((pad, y), LEGEND_TITLE, fill=(0, 0, 0), font=small)
    y += line
    for i, (k, text) in enumerate(zip(present, labels)):
        xx, yy = pad + (i % n_cols) * entry_w, y + (i // n_cols) * 18
        draw.rectangle((xx, yy + 1, xx + 13, yy + 14), fill=tuple(int(v) for v in colours[k]), outline=(0, 0, 0))
        draw.text((xx + 20, yy), text, fill=(0, 0, 0), font=small)
    return canvas


# ---------------------------------------------------------------------- one configured example
def resolve_edit(m: Manipulator, state: ImageState, example: ManipulateExample) -> tuple[int, int, pd.DataFrame, tuple[int, ...], tuple[float, ...]]:
    """Classes, the ranked latents table of both, and the (latents, unit values) to set."""
    target = m.class_id(example.target_class, f"manipulate example {example.name}: class")
    other = m.class_id(example.other_class, f"manipulate example {example.name}: other_class")
    target, other = m.default_classes(state, target, other)
    table = pd.concat(
        [m.rank_latents(state, target).assign(role="class"), m.rank_latents(state, other).assign(role="other class")],
        ignore_index=True,
    )
    if example.latents:
        latents, values = tuple(example.latents), tuple(example.values)
    else:
        values = tuple(example.values) or (-1.0, 1.0)
        firsts = [table[table.role == role]["latent"] for role in ("class", "other class")]
        if any(f.empty for f in firsts):
            raise ManipulateError(f"manipulate example {example.name}: no ranked latent for class or other class; name latents")
        latents = (int(firsts[0].iloc[0]), int(firsts[1].iloc[0]))
        if latents[0] == latents[1]:  # the same latent tops both: keep the first value only
            latents, values = latents[:1], values[:1]
    chosen = dict(zip(latents, values))
    table["unit_value"] = [chosen.get(int(s), np.nan) for s in table["latent"]]
    table["set_to"] = [chosen[int(s)] * m.max_value_S[int(s)] if int(s) in chosen else np.nan for s in table["latent"]]
    extra = [s for s in latents if s not in set(table["latent"])]
    if extra:  # named latents outside both top lists: list them too, with their values
        f_PS = state.f_PS.cpu().numpy()
        table = pd.concat([table, pd.DataFrame([{
            "role": "chosen", "class_id": -1, "class_name": "", "rank": 0, "latent": s, "score": np.nan, "score_kind": "named in the config",
            "value_on_class_tokens": np.nan, "value_max_on_image": float(f_PS[:, s].max()), "train_max": float(m.max_value_S[s]),
            "train_freq_pct": 100.0 * float(m.freq_S[s]), "unit_value": chosen[s], "set_to": chosen[s] * m.max_value_S[s],
        } for s in extra])], ignore_index=True)
    cols = ["role", "class_id", "class_name", "rank", "latent", "score", "score_kind", "value_on_class_tokens",
            "value_max_on_image", "train_max", "train_freq_pct", "unit_value", "set_to"]
    return target, other, table[cols], latents, values


def probability_table(m: Manipulator, result: EditResult) -> pd.DataFrame:
    """One row per class: probabilities before / after in percent (``prob_before_pct``,
    ``prob_after_pct``, as every table: :mod:`pipeline.units`), ranks, and patch counts (segmentation)."""
    lo = 1 if m.real_classes_only else 0
    rows = []
    rank_b = {c: i + 1 for i, c in enumerate(np.argsort(-result.probs_before_C, kind="stable"))}
    rank_a = {c: i + 1 for i, c in enumerate(np.argsort(-result.probs_after_C, kind="stable"))}
    before, after = result.counts(m.n_classes)
    for c in range(lo, m.n_classes):
        row = {"class_id": c, "class_name": m.class_names[c], "prob_before_pct": 100.0 * result.probs_before_C[c],
               "prob_after_pct": 100.0 * result.probs_after_C[c],
               "rank_before": rank_b[c], "rank_after": rank_a[c]}
        if m.task == "segmentation":
            row.update(patches_before=int(before[c]), patches_after=int(after[c]))
        rows.append(row)
    return pd.DataFrame(rows)


def run_example(m: Manipulator, example: ManipulateExample, out: Path | None = None) -> dict[str, Any]:
    """Everything for one example in ``out`` (default ``<results>/manipulate/<name>``); returns the summary."""
    from pipeline.provenance import record

    out = Path(out) if out is not None else out_dir(m.cfg, example.name)
    out.mkdir(parents=True, exist_ok=True)
    state = m.load_image(example.split, example.image)
    target, other, table, latents, values = resolve_edit(m, state, example)
    result = m.apply(state, latents, values)
    table.to_csv(out / "latents.csv", index=False, float_format="%.6g")
    probs = probability_table(m, result)
    probs.to_csv(out / "probabilities.csv", index=False, float_format="%.6g")
    edit_text = ", ".join(f"latent {s} -> {u:+.2f} x {m.max_value_S[s]:.3g} = {t:.3g}" for s, u, t in zip(latents, values, result.target_values))
    shown = {c for c, _, _ in m.top_classes(result.probs_before_C)} | {c for c, _, _ in m.top_classes(result.probs_after_C)}
    where = "mean over the patch tokens of the softmax over real classes" if m.task == "segmentation" else "softmax of the CLS-token probe"
    probability_chart(
        probs[probs.class_id.isin(shown)], out / "probabilities",
        title=f"{example.name}: probe class probabilities before / after the edit",
        random_weights=m.random_weights,
        subtitle=[f"{state.split} image {state.image_id} ({where})", f"block {m.block}: {edit_text}"],
    )
    files = [out / f for f in FILES[m.task]]
    if m.task == "segmentation":
        grid = tuple(m.reader(state.split).grid)
        fig = before_after_image(
            m.image_rgb(state), result.pred_before, result.pred_after, grid, m.class_names,
            title=f"{example.name}: {state.split} image {state.image_id}",
            lines=[f"block {m.block} patch tokens: {edit_text}", f"{result.n_changed} of {len(result.pred_after)} patches changed"],
            random_weights=m.random_weights,
        )
        fig.save(out / "maps.png", format="PNG")
    summary = {
        "example": example.name,
        "task": m.task,
        "split": state.split,
        "image_index": state.index,
        "image_id": state.image_id,
        "class": {"id": target, "name": m.class_names[target]},
        "other_class": {"id": other, "name": m.class_names[other]},
        "rank_by": m.rank_by,
        "latents": list(latents),
        "unit_values": list(values),
        "set_to": list(result.target_values),
        "value_scale": m.max_value_note,
        "edited_tokens": "every patch token" if m.task == "segmentation" else "the CLS token",
        "n_changed": result.n_changed,
        "n_tokens_predicted": len(result.pred_after),
        "top_classes_before": [{"id": c, "name": n, "probability": p} for c, n, p in m.top_classes(result.probs_before_C)],
        "top_classes_after": [{"id": c, "name": n, "probability": p} for c, n, p in m.top_classes(result.probs_after_C)],
        "readout": m.readout(result),
        "block": m.block,
        "sae": str(m.sae_path),
        "sae_member": m.sae_cfg.get("member"),
        "probe": str(m.probe_stem),
        "store": str(m.reader(state.split).path),
        "store_config_hash": m.reader(state.split).attrs["config_hash"],
        "random_weights": m.random_weights,
        "device": str(m.device),
        "files": [str(f) for f in files],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "provenance": record(m.cfg, "manipulate", example=example.name),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return summary
