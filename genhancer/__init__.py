"""Shared base of the four commands (``enhance``, ``llava-train``, ``leaderboard``,
``genhancer-demo``): :mod:`genhancer.runtime` (errors, typed configs, the CLI contract, checkpoints,
the training loop and its stage driver, seeding) and :mod:`genhancer.toyworld` (generated data and
tiny models for the offline presets). It imports none of the pipeline packages."""
