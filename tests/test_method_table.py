"""The method table of ``support/method_cases.py`` covers exactly the registered methods, correctly."""

from __future__ import annotations

import pytest

import ctxext

from support.method_cases import CASES


def test_every_registered_method_has_a_case():
    missing = sorted(set(ctxext.list_methods()) - set(CASES))
    assert not missing, f"add these methods to tests/support/method_cases.py: {missing}"


def test_every_case_names_a_registered_method():
    unknown = sorted(set(CASES) - set(ctxext.list_methods()))
    assert not unknown, f"tests/support/method_cases.py names methods ctxext does not register: {unknown}"


@pytest.mark.parametrize("name", sorted(set(CASES) & set(ctxext.list_methods())))
def test_case_kind_and_parameters_match_the_method(name):
    case, method = CASES[name], ctxext.get_method(name)
    assert case.kind == method.kind
    for params in (case.params, case.roundtrip_params, case.identity_params):
        method.config_class.from_params(name, params)  # raises CtxextError on a bad name or value
