"""`one_line`: the one way the package reports an exception on one line."""

from cubesearch.errors import one_line


def test_one_line_first_line_type_and_limit():
    exc = ValueError("  bad value\nsecond line\n")
    assert one_line(exc) == "bad value"
    assert one_line(exc, with_type=True) == "ValueError: bad value"
    assert one_line(exc, with_type=True, limit=8) == "ValueErr"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(RuntimeError("\n\n"), with_type=True) == "RuntimeError"
