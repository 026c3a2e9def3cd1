"""Chapter 12: evaluation that can tell a real difference from noise.

* ``perplexity``: per-token losses under the course protocol, what moves the number, bits per byte.
* ``stats``: bootstrap intervals over windows (paired across models), lm-eval's accuracies and standard errors.
* ``lmeval``: lm-evaluation-harness's requests on a model object, per-item log-likelihoods, a weight fingerprint.
* ``qa_task`` (with ``qa_bank``): the course's multiple-choice questions for the real chat model (an lm-eval task).
* ``leaderboard``: every compressed variant of the course in one table (``python -m course_lib.bench leaderboard``).
"""
