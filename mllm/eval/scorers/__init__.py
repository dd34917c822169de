"""Official-equivalent answer normalisation and scoring functions (pure, no file I/O)."""
from .gqa import gqa_convert, gqa_scores
from .mcq import can_infer, circular_hits, rotate_options, sqa_parse, sqa_pred_index
from .vqa import (evalai_normalize, process_digit_article, process_punctuation, textvqa_accuracy,
                  vizwiz_accuracy, vqa_eval_accuracy)
from .yesno import mme_parse, mme_subtask, mme_totals, pope_metrics, pope_parse

__all__ = [
    "can_infer", "circular_hits", "evalai_normalize", "gqa_convert", "gqa_scores", "mme_parse", "mme_subtask",
    "mme_totals", "pope_metrics", "pope_parse", "process_digit_article", "process_punctuation", "rotate_options",
    "sqa_parse", "sqa_pred_index", "textvqa_accuracy", "vizwiz_accuracy", "vqa_eval_accuracy",
]
