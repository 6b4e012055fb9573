"""The test suite of sensorhub; its harness is the package tests.support."""

import pytest

# Before anything imports them: the harness's asserts fail with pytest's detailed messages too.
pytest.register_assert_rewrite("tests.support")
