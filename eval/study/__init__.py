"""The small-scale study: does a method put rarely-captioned detail into CLIP's global token?

``config`` (the typed config tree and its presets), ``protocol`` (the original tower, the
``enhance`` runs, the held-out sets), ``metrics`` (scoring one tower through ``eval.clip``, the
aggregation over seeds), ``sensitivity`` (how much of the stage-1 loss the condition explains),
``control`` (the positive control), ``report`` (tables and figures), ``trends`` and
``trends_report`` (the paper's four knobs as dose-response curves, ``--part trends``), ``runner``
and ``cli``. Results and pre-registrations: ``docs/study.md`` (trends: ``docs/study-trends.md``).
"""
