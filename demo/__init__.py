"""``genhancer-demo``: a Gradio page comparing an original and an enhanced vision encoder.

The logic lives in plain functions, one module per view, so it is tested without a browser:

* :mod:`demo.config`: the configuration tree and the ``tiny`` preset;
* :mod:`demo.models`: :class:`~demo.models.ModelRegistry`, lazy load-once models with page messages;
* :mod:`demo.pair_test`: the MMVP-style pair test; :mod:`demo.gallery`: its one-click examples;
* :mod:`demo.heatmap`: where each model looks; :mod:`demo.reconstruct`: what the global token keeps;
* :mod:`demo.chat`: two LLaVAs answering side by side, streamed;
* :mod:`demo.leaderboard_view`: a ``leaderboard`` output folder;
* :mod:`demo.app`: the page over those functions; :mod:`demo.cli`: the command.
"""
