"""`one_line`: the one way the package reports an exception on one line."""

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from cubesearch.core.errors import ConfigError, CubesearchError, one_line, option_name, validation_message


def test_one_line_first_line_type_and_limit():
    exc = ValueError("  bad value\nsecond line\n")
    assert one_line(exc) == "bad value"
    assert one_line(exc, with_type=True) == "ValueError: bad value"
    assert one_line(exc, with_type=True, limit=8) == "ValueErr"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(RuntimeError("\n\n"), with_type=True) == "RuntimeError"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = 8

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"{option_name('batch_size')} must be at least 1, not {v}")
        return v


@pytest.mark.parametrize("values, message", [
    (dict(batch_size=0), "--batch-size must be at least 1, not 0"),
    (dict(batch_size="x"), "--batch-size: Input should be a valid integer"),
    (dict(bach_size=2), "unknown option 'bach_size' (known: batch_size)"),
])
def test_validation_message_names_the_option(values, message):
    with pytest.raises(ValidationError) as info:
        _Settings(**values)
    assert validation_message(info.value, _Settings.model_fields).startswith(message)
    assert issubclass(ConfigError, CubesearchError) and issubclass(ConfigError, ValueError)
