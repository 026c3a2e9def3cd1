"""Chapter 08: knowledge distillation, written out.

loss         the distillation loss: alpha * CE + (1 - alpha) * T^2 * KL(p_T || p_S), per token, masked
seed         seed 003 section 6.4.2's loss, transcribed, and what its 'batchmean' does to (B, L, V) logits
trainer      the training loop (CE only, or distillation from a teacher), evaluation against the teacher
student      the chapter's student: the course model's recipe at a quarter of the parameters
sequence     sequence-level / black-box distillation: sampling a teacher corpus
incontext    context distillation: learning without the prefix what the teacher does with it
encoder      distilling a BERT-style encoder classifier into half its depth (DistilBERT's recipe);
             encoder_task builds its task: which work a passage of the course corpus comes from
experiments  the chapter's experiments by profile, and `python -m course_lib.bench distill`
"""

from .encoder import (DISTILBERT_PUBLISHED, EncoderSpec, half_depth_student, new_encoder, passage_task,
                      run_encoder_experiment, train_classifier)
from .loss import IGNORE_INDEX, LossParts, distillation_loss, next_token_labels, soft_kl, soft_targets
from .student import STUDENT, new_student, param_count
from .trainer import CorpusWindows, DistillConfig, DistillRun, EvalSet, evaluate, make_eval_set, train_student

__all__ = ["IGNORE_INDEX", "LossParts", "distillation_loss", "next_token_labels", "soft_kl", "soft_targets",
           "STUDENT", "new_student", "param_count", "CorpusWindows", "DistillConfig", "DistillRun", "EvalSet",
           "evaluate", "make_eval_set", "train_student", "DISTILBERT_PUBLISHED", "EncoderSpec", "half_depth_student",
           "new_encoder", "passage_task", "run_encoder_experiment", "train_classifier"]
