"""Evaluation: a model's answers to test sets, a pairwise judge in both orders, the win score, a report.

Modules: ``testsets`` (reading questions and answer files), ``generate`` (answers, resumable), ``judge``
(prompt, verdict parser, outcome rule, the judge run through the teacher's client and store), ``report``
(``results.json``, ``pairs.parquet``, the plot, the terminal table), ``card`` (results into model cards).
The method is described in docs/method.md.
"""
