"""Test support shipped with xplain: deterministic model zoo, weight porting, and the backend
conformance suite that every backend (built-in or third-party) must pass."""
