"""What a latent edit means for each dataset task: one record per task, read by the session,
the ranking and the files, so that none of them switches on the task's name.

=======================  ===============================  =================================
fact                     segmentation                     classification
=======================  ===============================  =================================
edited tokens            every patch token                the CLS token (a 1-token "image")
the probe reads          the patch tokens                 the final CLS token
labels (store array)     ``patch_label`` [image, patch]   ``label`` [image]
class 0                  "other": predictions over the    a class like the others
                         real classes 1 … C−1 unless the
                         probe was trained on it
ranking by train F1      the class–latent F1 table        none (F1 is made from patch
                         (``class-f1``)                   labels)
value scale ``max_s``    max over the train patches       max over train patches and CLS
patch counts and maps    yes (``probabilities.csv``       no
                         columns, ``maps.png``)
=======================  ===============================  =================================

:data:`EDIT_TASKS` maps a dataset task (``DatasetConfig.task``) to its record. Reads nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipeline.manipulate.state import EditResult

# A readout line of an edit's result: (class names, number of classes, result) -> text
Readout = Callable[[tuple[str, ...], int, "EditResult"], str]


def _patch_readout(class_names: tuple[str, ...], n_classes: int, result: EditResult) -> str:
    _, after = result.counts(n_classes)
    parts = [f"{class_names[c]}={int(after[c])}" for c in np.flatnonzero(after)]
    return (
        f"patches per predicted class: {', '.join(parts)}; changed {result.n_changed}/{len(result.pred_after)}; "
        f"map {result.map_hash()}"
    )


def _cls_readout(class_names: tuple[str, ...], n_classes: int, result: EditResult) -> str:
    c = int(result.pred_after[0])
    return (
        f"predicted class: {class_names[c]} ({result.probs_after_C[c]:.1%}); changed {result.n_changed}/1; "
        f"probs {result.map_hash()}"
    )


@dataclass(frozen=True)
class EditTask:
    """The facts of editing one dataset task's SAE (see the module docstring's table).

    Attributes:
        task: the dataset task (``segmentation`` | ``classification``).
        tokens: the store's token selection an edit changes and the probe reads (``patches`` |
            ``cls``, as :meth:`pipeline.cache.CacheReader.iter_chunks` names them).
        edited_text: those tokens in words (summaries, the app).
        label_array: the store's label array (``patch_label`` | ``label``).
        other_is_not_a_class: class 0 is "other": the prediction is over classes 1 … C−1 unless
            the probe was trained with ``train_on_other``.
        class_f1: the class–latent F1 table can rank latents (it is made from patch labels).
        value_over_cls: the value scale ``max_s`` also takes the train CLS tokens' maximum.
        patch_counts: ``probabilities.csv`` counts patches per class, ``maps.png`` is drawn.
        probabilities_text: what a class probability is, in words.
        readout: the one-line readout of a result.
    """

    task: str
    tokens: str
    edited_text: str
    label_array: str
    other_is_not_a_class: bool
    class_f1: bool
    value_over_cls: bool
    patch_counts: bool
    probabilities_text: str
    readout: Readout

    def token_slice(self, n_prefix: int) -> slice:
        """The edited tokens among a store's tokens (prefix tokens first, then the patches)."""
        return slice(n_prefix, None) if self.tokens == "patches" else slice(0, 1)


EDIT_TASKS = MappingProxyType(
    {
        "segmentation": EditTask(
            task="segmentation",
            tokens="patches",
            edited_text="every patch token",
            label_array="patch_label",
            other_is_not_a_class=True,
            class_f1=True,
            value_over_cls=False,
            patch_counts=True,
            probabilities_text="mean over the patch tokens of the softmax over real classes",
            readout=_patch_readout,
        ),
        "classification": EditTask(
            task="classification",
            tokens="cls",
            edited_text="the CLS token",
            label_array="label",
            other_is_not_a_class=False,
            class_f1=False,
            value_over_cls=True,
            patch_counts=False,
            probabilities_text="softmax of the CLS-token probe",
            readout=_cls_readout,
        ),
    }
)
