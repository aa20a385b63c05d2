"""The vLLM tests import the tiny savers of tests/ (tests/conftest.py is loaded above this one)."""
