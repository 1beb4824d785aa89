"""Knowledge distillation: the knowledge and its loss (:mod:`~npuq.distill.losses`), taps on named
modules of unmodified models (:mod:`~npuq.distill.taps`), the teacher-student objective
(:mod:`~npuq.distill.objective`), processes (:mod:`~npuq.distill.processes`: offline, several teachers,
privileged information, deep mutual learning, fine-tuning with a teacher), label-free
quantization-aware distillation of a fake-quantized graph from its FP32 model
(:mod:`~npuq.distill.label_free`), the shared training loop with checkpoints, resumption and torchrun
support (:mod:`~npuq.distill.trainer`), and experiments described by TOML configs
(:mod:`~npuq.distill.experiment`, ``npuq distill CONFIG``).
"""

from npuq.distill.experiment import LOSS_KINDS, PROCESSES, ConfigError, Experiment, load_experiment, run_experiment
from npuq.distill.label_free import label_free_qat
from npuq.distill.objective import DistillationObjective, Term
from npuq.distill.processes import finetune_with_teacher, mutual_learner, offline_learner
from npuq.distill.trainer import Learner, OptimConfig, accuracy, fit

# LOSS_KINDS and PROCESSES: the names of npuq.registry.DISTILL_LOSSES and DISTILL_PROCESSES (a config's
# [[terms]] loss and process)
__all__ = [
    "LOSS_KINDS",
    "PROCESSES",
    "ConfigError",
    "DistillationObjective",
    "Experiment",
    "Learner",
    "OptimConfig",
    "Term",
    "accuracy",
    "finetune_with_teacher",
    "fit",
    "label_free_qat",
    "load_experiment",
    "mutual_learner",
    "offline_learner",
    "run_experiment",
]
