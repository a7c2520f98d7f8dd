"""Evaluation of synthesized speech: one package that every report and ``emoctl evaluate`` share.

* :mod:`~emoctl.evaluation.steered`: speak prompts under a steering method, batch by batch, paired seeds;
* :mod:`~emoctl.evaluation.scoring`: the evaluation models, corpus references and per-clip metric rows;
* :mod:`~emoctl.evaluation.summary`: means with 95% intervals, their Markdown and CSV forms;
* :mod:`~emoctl.evaluation.alpha`: the one rule that picks α from a sweep;
* :mod:`~emoctl.evaluation.texts`: the held-out sentences an evaluation speaks.

Reports (:mod:`emoctl.reports`) only arrange these into tables and figures.
"""
