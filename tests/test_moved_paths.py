"""training/ was grouped by job (lightning/, records/, files/): every old module path README or a user may import
still hands on its names for one release, each with a DeprecationWarning naming where it lives now."""

import importlib

import pytest

from tlama_core.training.moved import MOVED

CASES = [(old, name, new) for old, names in MOVED.items() for name, new in names.items()]


@pytest.mark.parametrize(("old", "name", "new"), CASES)
def test_an_old_path_gives_the_same_object_with_a_deprecation_warning(old, name, new):
    module = importlib.import_module(f"tlama_core.training.{old}")
    with pytest.warns(DeprecationWarning, match=rf"^tlama_core\.training\.{old}\.{name} moved to {new}\.{name}; "
                                                r"the old path is removed in 0\.3\.$"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_the_documented_old_import_statements_still_work():
    with pytest.warns(DeprecationWarning, match="tlama_core.training.empty_init"):
        from tlama_core.training.module import empty_init
    from tlama_core.training import empty_init as new

    assert empty_init is new


def test_a_name_an_old_path_never_held_is_an_attribute_error():
    module = importlib.import_module("tlama_core.training.precision")
    with pytest.raises(AttributeError, match="has no attribute 'resolve_precision'"):
        module.resolve_precision  # noqa: B018
