"""The test suite. The helpers beside the tests get pytest's assertion messages too."""

import pytest

pytest.register_assert_rewrite("tests.browser_support", "tests.cluster_support", "tests.wire")
