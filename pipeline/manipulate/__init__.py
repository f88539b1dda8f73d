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

Outputs of :func:`run_example` in ``<results>/manipulate/<name>/``: ``latents.csv``,
``probabilities.csv``, ``probabilities.{html,png,svg}``, ``maps.png`` (segmentation) and
``summary.json`` (:mod:`.run` says what each holds).

Modules: :mod:`.state` (error type, one image's state, one edit's result), :mod:`.session`
(:class:`Manipulator`: load once, encode, edit, re-forward, predict, explain), :mod:`.ranking`
(latents of a class, default classes), :mod:`.figures` (probability bars, before | after
maps), :mod:`.run` (one configured example → files); the CLI is
:mod:`pipeline.commands.manipulate`, the app ``notebooks/manipulate.py``.

Dimension key: T tokens, P patches (or 1 CLS token for classification), D width, S latents,
K edited latents, C classes, H/W pixels.
"""

from __future__ import annotations

from pipeline.manipulate.figures import before_after_image, probability_bars, probability_chart
from pipeline.manipulate.run import FILES, example_outputs, out_dir, probability_table, resolve_edit, run_example
from pipeline.manipulate.session import RANK_BY, Manipulator
from pipeline.manipulate.state import EditResult, ImageState, ManipulateError

__all__ = [
    "FILES",
    "RANK_BY",
    "EditResult",
    "ImageState",
    "ManipulateError",
    "Manipulator",
    "before_after_image",
    "example_outputs",
    "out_dir",
    "probability_bars",
    "probability_chart",
    "probability_table",
    "resolve_edit",
    "run_example",
]
