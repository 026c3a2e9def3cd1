"""Loader of the course's lm-eval tasks (hand-written; the data beside it comes from
``python -m course_lib.lm.eval_tasks build``).

The task YAMLs name ``load`` as their ``custom_dataset``; lm-eval imports this file from the
YAMLs' directory and calls ``load(**metadata, **dataset_kwargs)``. The ``data_files`` paths are
resolved relative to this file, so the tasks work from any working directory, offline.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(data_files=None, **_metadata):
    import datasets

    if isinstance(data_files, str):
        data_files = {"test": data_files}
    splits = {}
    for split, name in (data_files or {}).items():
        path = HERE / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; create it with: python -m course_lib.lm.eval_tasks build")
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)
