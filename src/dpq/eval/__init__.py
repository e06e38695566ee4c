"""dpq.eval: WikiText-2 perplexity, zero-shot tasks (lm-eval on local data), comparisons and reports."""

from dpq.eval.perplexity import PerplexityError, PerplexityResult, perplexity_of_ids, wikitext2_perplexity
from dpq.eval.report import paired_average_difference
from dpq.eval.run import evaluate, evaluate_path
from dpq.eval.tasks import TASKS, TaskError, run_tasks

__all__ = [
    "TASKS",
    "PerplexityError",
    "PerplexityResult",
    "TaskError",
    "evaluate",
    "evaluate_path",
    "paired_average_difference",
    "perplexity_of_ids",
    "run_tasks",
    "wikitext2_perplexity",
]
