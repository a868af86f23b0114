"""scripts/scheduler_bench.py's config parsing."""
import pytest

from llmserve.core.sched_bench import parse_sizes


def test_sizes_parse_and_bad_sizes_name_the_field():
    # Was a bare "invalid literal for int() with base 10: 'abc'" from the script.
    assert parse_sizes("64, 256,") == [64, 256]
    for bad in ("abc", "64,x", "0", "", "-4"):
        with pytest.raises(ValueError, match="sizes must be comma-separated ints >= 1"):
            parse_sizes(bad)
