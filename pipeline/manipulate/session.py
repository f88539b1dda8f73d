"""A manipulate session: everything loaded once, then one re-forward per edit.

:class:`Manipulator` reads block ``l``'s cached output of one image (``sae.layer``), encodes
the edited tokens with the SAE (with its stored input scaling), sets chosen latents to chosen
values keeping the SAE's error term (:class:`pipeline.interventions.LatentEditor`), and
re-runs blocks ``l+1 … N−1``, the final norm and the probe. Ranking latents and choosing
classes live in :mod:`pipeline.manipulate.ranking`; the session's methods of those names
call it.

Dimension key: T tokens, P patches (or 1 CLS token for classification), D width, S latents,
K edited latents, C classes.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from pipeline.cache import CacheReader
from pipeline.cache.store import group_array
from pipeline.config import Config, ManipulateConfig
from pipeline.context import RunContext
from pipeline.data import store_image_loader
from pipeline.feature_selection import load_f1
from pipeline.interventions import LatentEditor
from pipeline.layout import sae_files
from pipeline.manipulate import ranking
from pipeline.manipulate.state import EditResult, ImageState, ManipulateError
from pipeline.manipulate.tasks import EDIT_TASKS
from pipeline.methods import Edit
from pipeline.plan import manipulate_probe, manipulate_probe_stem, manipulate_sae
from pipeline.probes import load_probe, predict_classes
from pipeline.runtime import forward_precision
from pipeline.sae import encode_tokens, load_latent_stats
from pipeline.sae.applies import trained_block

log = logging.getLogger(__name__)

RANK_BY = ("auto", "f1", "activation")


class Manipulator:
    """Everything loaded once (model, SAE, probe, latent statistics, stores); one re-forward per edit."""

    def __init__(self, cfg: Config | RunContext, *, device: str | torch.device | None = None):
        """``Manipulator(ctx)`` in a step: its run context's device, checked stores, model and
        SAE. ``Manipulator(cfg, device=...)`` (notebooks) starts a run context first (torch's
        threads at the config's ``threads``; the device resolved from ``device`` or the
        config's). Loads the train store, the SAE, its latent statistics, the model and the probe
        once, each refused when it does not fit the others."""
        ctx = cfg if isinstance(cfg, RunContext) else RunContext.start(cfg, device=device)
        cfg = ctx.cfg
        self.ctx, self.cfg = ctx, cfg
        self.settings = cfg.manipulate or ManipulateConfig()
        if self.settings.rank_by not in RANK_BY:
            raise ManipulateError(
                f"{cfg.source}: key manipulate/rank_by: {self.settings.rank_by!r} is not one of {', '.join(RANK_BY)}"
            )
        sc = manipulate_sae(cfg)
        self.task = cfg.dataset(sc.cache.dataset).task
        self.edit_task = EDIT_TASKS[self.task]
        manipulate_probe(cfg)
        self.device = ctx.device
        train = self.reader("train")
        self.block = train.block(sc.layer)
        self.n_prefix = train.n_prefix
        if self.edit_task.tokens == "cls" and not train.n_cls:
            raise ManipulateError(
                f"{train.path}: the model has no CLS token to edit; manipulate on a {self.task} cache edits CLS tokens"
            )
        self.class_names = train.class_names
        self.n_classes = train.n_classes
        self.random_weights = train.random_weights

        sae_files_ = sae_files(cfg)
        self.sae_path = sae_files_.sae_pt
        if not self.sae_path.exists():
            raise FileNotFoundError(f"{self.sae_path}: no SAE checkpoint; run sae-train first")
        sae, self.sae_cfg, self.scaling = ctx.sae(self.sae_path, train)  # refused on another model / block / width
        trained = trained_block(self.sae_cfg)
        if trained is not None and trained != self.block:
            raise ManipulateError(f"{self.sae_path}: trained on block {trained}, sae.layer is block {self.block}")
        self.sae = sae.to(self.device).eval()
        self.n_latents = int(self.sae.W_enc.shape[1])
        latents_path = sae_files_.latents_zarr
        if not latents_path.exists():
            raise FileNotFoundError(f"{latents_path}: no latent statistics; run sae-latents first")
        stats = load_latent_stats(latents_path)
        self.max_value_S = np.asarray(stats["max_value"].values, dtype=np.float64)
        self.freq_S = np.asarray(stats["freq"].values, dtype=np.float64)
        self.max_value_note = "max f over the train patch tokens (latents.zarr)"
        f1_path = sae_files_.class_f1_zarr
        self.f1 = load_f1(f1_path) if self.edit_task.class_f1 and f1_path.exists() else None
        if self.settings.rank_by == "f1" and self.f1 is None:
            why = (
                f"{self.task} has no class-F1 table (it is made from patch labels)"
                if not self.edit_task.class_f1
                else f"{f1_path} does not exist (run class-f1)"
            )
            raise ManipulateError(f"{cfg.source}: key manipulate/rank_by: f1, but {why}")
        self.rank_by = (
            ("f1" if self.f1 is not None else "activation")
            if self.settings.rank_by == "auto"
            else self.settings.rank_by
        )

        # refused unless it has the weights the store was extracted with (the later blocks must match)
        self.backbone, self.model_provenance = ctx.backbone(sc.cache, train)
        self.probe_stem = manipulate_probe_stem(cfg)
        probe, self.probe_meta = load_probe(self.probe_stem)
        if probe.out_features != self.n_classes or probe.in_features != train.d_model:
            raise ManipulateError(
                f"{self.probe_stem}: probe is Linear({probe.in_features}, {probe.out_features}), "
                f"the store has D={train.d_model}, {self.n_classes} classes"
            )
        self.probe = probe.to(self.device).eval()
        self.real_classes_only = self.edit_task.other_is_not_a_class and not self.probe_meta.get(
            "probe_config", {}
        ).get("train_on_other", False)
        # the editor sees the edited tokens only when they are not the patches after the prefix
        editor_prefix = self.n_prefix if self.edit_task.tokens == "patches" else 0
        self.editor = LatentEditor(self.sae, self.scaling, n_prefix=editor_prefix)
        self.class_specificity_CS: np.ndarray | None = None  # ranking.class_specificity fills it on first use
        if self.edit_task.value_over_cls:
            _, cls_max = ranking.train_class_stats(self)
            self.max_value_S = np.maximum(self.max_value_S, cls_max)
            self.max_value_note = "max f over the train patch and CLS tokens"

    @property
    def edited_tokens(self) -> slice:
        """The tokens an edit changes and the probe reads: the patches (segmentation) or the CLS token."""
        return self.edit_task.token_slice(self.n_prefix)

    # ------------------------------------------------------------------ stores and images
    def reader(self, split: str) -> CacheReader:
        """The SAE cache's store of ``split``, checked against the config (the run context's, opened once)."""
        return self.ctx.store(manipulate_sae(self.cfg).cache, split)

    def image_ids(self, split: str = "val") -> list[str]:
        r = self.reader(split)
        return [str(i) for i, ok in zip(r.image_ids, r.valid) if ok]

    def image_index(self, split: str, image: str | int) -> int:
        """Index into the split of an image id or index (a valid image)."""
        r = self.reader(split)
        if isinstance(image, (int, np.integer)) or (
            isinstance(image, str) and image.isdigit() and image not in set(map(str, r.image_ids))
        ):
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
                raise ManipulateError(
                    f"{self.cfg.source}: {what} {spec!r} is not a class name; classes: {', '.join(names)}"
                )
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
        return encode_tokens(self.sae, self.scaling, acts_1TD, tokens=self.edited_tokens)[0]

    @torch.no_grad()
    def logits(self, acts_1TD: torch.Tensor) -> torch.Tensor:
        """Re-forward from block l: [P, C] patch logits or [1, C] CLS logits."""
        with forward_precision(
            self.reader("train").attrs.get("forward_dtype", "float32"), self.device
        ):  # the store's precision
            final = self.backbone.forward_from(self.block, acts_1TD.to(self.device, self.backbone.dtype))
        return self.probe(final[0, self.edited_tokens].float())

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """[C]: segmentation, the mean over patches of the softmax over the classes the probe predicts."""
        if self.real_classes_only:
            p = torch.zeros_like(logits)
            p[:, 1:] = logits[:, 1:].softmax(-1)
        else:
            p = logits.softmax(-1)
        return p.mean(0).cpu().numpy().astype(np.float64)

    def predict(self, logits: torch.Tensor) -> np.ndarray:
        """[P] (or [1]) predicted class ids (never 0 = other when ``real_classes_only``)."""
        return predict_classes(logits, real_classes_only=self.real_classes_only).cpu().numpy()

    @torch.no_grad()
    def edited_acts(
        self, acts_1TD: torch.Tensor, latents: tuple[int, ...], unit_values: tuple[float, ...]
    ) -> torch.Tensor:
        """acts with ``latents`` set to ``unit · max_s`` on the edited tokens (float32)."""
        targets = self.target_values(latents, unit_values)
        if not latents:
            return acts_1TD.float()
        if self.edit_task.tokens == "patches":  # the editor keeps the prefix tokens as they are
            return self.editor.apply(acts_1TD, Edit(tuple(latents), targets))
        out = acts_1TD.float().clone()
        out[:, :1] += self.editor.set_latents(acts_1TD[:, :1], tuple(latents), targets)
        return out

    def target_values(self, latents: tuple[int, ...], unit_values: tuple[float, ...]) -> tuple[float, ...]:
        if len(latents) != len(unit_values):
            raise ManipulateError(f"{len(unit_values)} values for {len(latents)} latents")
        for s in latents:
            if not 0 <= int(s) < self.n_latents:
                raise ManipulateError(
                    f"{self.sae_path}: latent {s} does not exist (the SAE has {self.n_latents} latents: 0..{self.n_latents - 1})"
                )
        for u in unit_values:
            if not -1.0 <= float(u) <= 1.0:
                raise ManipulateError(
                    f"value {u} is outside [-1, 1] (values are fractions of the latent's max observed value on train)"
                )
        return tuple(float(u) * float(self.max_value_S[int(s)]) for s, u in zip(latents, unit_values))

    # ------------------------------------------------------------------ one image
    @torch.no_grad()
    def load_image(self, split: str, image: str | int) -> ImageState:
        idx = self.image_index(split, image)
        r = self.reader(split)
        acts = torch.from_numpy(np.asarray(r.read(self.block, idx, idx + 1), dtype=np.float32)).to(self.device)
        logits = self.logits(acts)
        name = self.edit_task.label_array  # [P] patch labels, or the image's [1] label
        labels = np.atleast_1d(np.asarray(group_array(r.group, name)[idx], dtype=np.int64)) if name in r.group else None
        return ImageState(
            split,
            idx,
            str(r.image_ids[idx]),
            acts,
            self.encode(acts),
            logits,
            self.probabilities(logits),
            self.predict(logits),
            labels,
        )

    @torch.no_grad()
    def apply(
        self, state: ImageState, latents: tuple[int, ...] = (), unit_values: tuple[float, ...] = ()
    ) -> EditResult:
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

    # ------------------------------------------------------------------ choosing classes and latents (pipeline.manipulate.ranking)
    def default_classes(self, state: ImageState, target: int | None, other: int | None) -> tuple[int, int]:
        """See :func:`pipeline.manipulate.ranking.default_classes`."""
        return ranking.default_classes(self, state, target, other)

    def rank_latents(self, state: ImageState, c: int, n: int | None = None) -> pd.DataFrame:
        """See :func:`pipeline.manipulate.ranking.rank_latents`."""
        return ranking.rank_latents(self, state, c, n)

    def class_means(self) -> np.ndarray:
        """See :func:`pipeline.manipulate.ranking.class_specificity`."""
        return ranking.class_specificity(self)

    # ------------------------------------------------------------------ explaining a result
    def top_classes(self, probs_C: np.ndarray, n: int | None = None) -> list[tuple[int, str, float]]:
        n = n or self.settings.n_top_classes
        lo = 1 if self.real_classes_only else 0
        order = [int(c) for c in np.argsort(-probs_C, kind="stable") if c >= lo][:n]
        return [(c, self.class_names[c], float(probs_C[c])) for c in order]

    def readout(self, result: EditResult) -> str:
        """One line that names the prediction (what the app shows and the browser test reads)."""
        return self.edit_task.readout(tuple(self.class_names), self.n_classes, result)

    # ------------------------------------------------------------------ pictures
    def image_rgb(self, state: ImageState) -> np.ndarray | None:
        """The image as the model saw it (uint8 [H, W, 3]), or None where the dataset cannot be read."""
        try:
            return np.asarray(store_image_loader(self.reader(state.split))(state.index).convert("RGB"))
        except Exception as err:  # noqa: BLE001  (a picture is optional: the numbers do not need it)
            log.warning("cannot read image %s for the figure: %s", state.image_id, err)
            return None
