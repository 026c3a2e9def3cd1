"""How the bundled model was built; the chapters never import this package.

    corpus_prepare   python -m course_lib.pipeline.corpus_prepare prepare   (data/corpus/)
    tokenizer_train  python -m course_lib.pipeline.tokenizer_train         (the byte-level BPE tokenizer)
    train            python -m course_lib.pipeline.train --out DIR          (the training run)
    baselines        n-gram baselines scored on the same token positions
    model_card       python -m course_lib.pipeline.model_card               (data/course-model/README.md)
    model_eval       python -m course_lib.bench model-eval                  (perplexities and lm-eval, GPU and CPU)
"""
