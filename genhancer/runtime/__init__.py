"""The runtime every command runs on: :mod:`.errors`, :mod:`.configtools` (typed, strict configs and
``doc()``), :mod:`.cli` (the shared flag contract), :mod:`.checkpoint` (atomic checkpoints),
:mod:`.trainer` (the training loop), :mod:`.seeding`, :mod:`.deepspeed_compat` and
:mod:`.envreport` (``genhancer-env``)."""
