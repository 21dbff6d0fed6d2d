"""Backend conformance: every Backend op against a numpy reference, on the backend under test."""
import pytest

from xplain.testing.conformance import CHECKS, run_check


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_conformance(fw, check):
    run_check(fw.B, check)
