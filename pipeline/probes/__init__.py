"""Linear probes on cached ViT activations: sweep training (:mod:`.linear`) and figures (:mod:`.figures`)."""

from pipeline.probes.linear import (
    IGNORE_LABEL,
    ProbeMember,
    ProbeSweep,
    ProbeTrainConfig,
    best_member,
    fit_sweep,
    load_probe,
    member_grid,
    member_state,
    predict_classes,
    predict_logits,
    save_probe,
    sweep_confusions,
    sweep_table,
)

__all__ = [
    "IGNORE_LABEL",
    "ProbeMember",
    "ProbeSweep",
    "ProbeTrainConfig",
    "best_member",
    "fit_sweep",
    "load_probe",
    "member_grid",
    "member_state",
    "predict_classes",
    "predict_logits",
    "save_probe",
    "sweep_confusions",
    "sweep_table",
]
