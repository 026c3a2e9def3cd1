"""The course's language model as every chapter uses it: load it, feed it, walk it, train it, measure it.

    models      load_model() (the bundled model, or a hub model with COURSE_MODEL), tiny_model(), linear layers
    corpus      the course corpus's splits (reading; building is pipeline.corpus_prepare)
    tokens      token streams, random windows, calibration_batches
    blocks      find_blocks, check_calibration, first_block_inputs, run_block: a model one block at a time
    recipe      the course model's architecture (ModelSpec) and training helpers (AdamW, schedule, autocast)
    perplexity  the course's perplexity protocols (FAST, FULL)
    eval_tasks  the local lm-evaluation-harness tasks (course_ppl, course_nextline)

It imports only core/; the chapters and the build pipeline import it.
"""
