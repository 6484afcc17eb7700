"""Publish a run: the upload folder (:mod:`.upload`), its model card (:mod:`.card`), and the
``genhancer-publish`` command (:mod:`.cli`)."""
