"""`cubesearch.core.logging`: one `cubesearch` logger writing plain lines on stderr off-terminal."""

import logging

from cubesearch.core import logging as cs_logging


def test_logger_writes_one_plain_line_on_stderr_and_obeys_verbosity(capsys):
    log = cs_logging.get_logger("cubesearch.test")
    log.info("baseline: training x")
    assert capsys.readouterr().err == "baseline: training x\n"
    cs_logging.set_verbosity(logging.WARNING)
    try:
        log.info("hidden")
        assert capsys.readouterr().err == ""
    finally:
        cs_logging.set_verbosity(logging.INFO)
    assert cs_logging.get_logger("other").name == "cubesearch.other"


def test_progress_enabled_reads_the_environment(monkeypatch):
    monkeypatch.delenv("CUBESEARCH_NO_PROGRESS", raising=False)
    assert cs_logging.progress_enabled(True) and not cs_logging.progress_enabled(False)
    monkeypatch.setenv("CUBESEARCH_NO_PROGRESS", "1")
    assert not cs_logging.progress_enabled(True)
