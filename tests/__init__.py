"""The test suite: test files named after the module or feature they test, their helpers
in tests/support/ (which get pytest's assertion messages too), and the fixtures in
conftest.py."""

import pytest

pytest.register_assert_rewrite("tests.support")
