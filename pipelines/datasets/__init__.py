"""Datasets we write: the img2dataset schema, a synthetic sample, the real offline catalogue, and
reading labelled items (caption, query, split) back for fine-tuning, evaluation and reports."""
