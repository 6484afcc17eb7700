"""``loading``: a loader's failure becomes the one-line error every command prints."""

from __future__ import annotations

import pytest

from genhancer.runtime.errors import UserError, loading


def test_loader_failures_become_one_line_user_errors():
    with pytest.raises(UserError) as err, loading("the VAE from 'x'", "Point vae.name_or_path at it."):
        raise OSError("x does not appear to have a file named config.json.\nCheckout the hub.")
    assert str(err.value) == (
        "cannot load the VAE from 'x': x does not appear to have a file named config.json. "
        "Point vae.name_or_path at it."
    )
    with pytest.raises(UserError, match=r"^cannot load y: bad$"), loading("y"):
        raise ValueError("bad")


def test_other_exceptions_pass_through():
    with pytest.raises(KeyError), loading("z"):
        raise KeyError("not a loading failure")
