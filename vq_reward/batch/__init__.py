"""Batch scoring: image files into a resumable JSONL results file, the job behind `vq-reward score` and the scores
of `vq-reward eval`.

- `files`: the image files under folders, and output paths checked before a model loads (light: no torch);
- `results_file`: the results file, its format and how to read it, and its guarantees (light: no torch);
- `job`: `score_files`, one resumable run of a scorer over files.

Sits between the library and the command line: imports the scorer, never imported by it or by `data`.
"""
