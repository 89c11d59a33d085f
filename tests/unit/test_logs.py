"""The daemons' one logging setup (egress_cni.logs): the `extra=` fields of a record reach the line,
in text (key=value after the message) and in JSON lines, and the daemons' entry points use it."""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress_cni import logs

pytestmark = pytest.mark.unit


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_text_puts_the_fields_after_the_message(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.formatter(logs.TEXT))
    logger.info("slow reconcile pass", extra={"seconds": 0.61, "everything": True, "node": "n1", "error": "no route to host",
                                              "eips": ["10.6.1.10", "10.6.1.11"], "held": {"b", "a"}, "gone": None})
    line = stream.getvalue().rstrip("\n")
    prefix, _, rest = line.partition(" INFO tests.logs slow reconcile pass ")
    assert prefix and rest == ('seconds=0.61 everything=true node=n1 error="no route to host" '
                               'eips=["10.6.1.10","10.6.1.11"] held=["a","b"] gone=null')
    # each pair splits back out (values with spaces are quoted)
    assert dict(p.split("=", 1) for p in shlex.split(rest))["error"] == "no route to host"


def test_text_without_fields_is_the_plain_line_and_a_traceback_follows(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.formatter(logs.TEXT))
    logger.warning("plain %s", "args")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("reconcile failed; retrying", extra={"attempt": 3})
    first, second = stream.getvalue().split("\n", 1)
    assert first.endswith(" WARNING tests.logs plain args")
    assert second.split("\n")[0].endswith("reconcile failed; retrying attempt=3")
    assert "Traceback (most recent call last)" in second and "RuntimeError: boom" in second


def test_json_lines_carry_the_fields(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.formatter(logs.JSON))
    logger.info("became leader", extra={"identity": "a b", "level": "clash", "path": Path("/x"), "held": frozenset({2, 1})})
    try:
        raise ValueError("bad")
    except ValueError:
        logger.error("failed", exc_info=True)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{"))
    assert first["level"] == "INFO" and first["logger"] == "tests.logs" and first["message"] == "became leader"
    assert first["identity"] == "a b" and first["field.level"] == "clash" and first["path"] == "/x" and first["held"] == [1, 2]
    assert first["time"].endswith("+00:00")
    assert second["message"] == "failed" and "ValueError: bad" in second["exception"]


def test_setup_replaces_root_handlers_and_checks_its_inputs() -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        stream = io.StringIO()
        logs.setup("debug", logs.JSON, stream)
        logs.setup("warning", logs.JSON, stream)  # twice: still one handler
        assert len(root.handlers) == 1 and root.level == logging.WARNING
        logging.getLogger("tests.root_setup").warning("w", extra={"k": 1})
        assert json.loads(stream.getvalue())["k"] == 1
        with pytest.raises(ValueError, match="log level 'LOUD'"):
            logs.setup("LOUD")
        with pytest.raises(ValueError, match="log format 'xml'"):
            logs.formatter("xml")
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_flag_wins_over_environment_over_default() -> None:
    assert logs.resolve(None, None, {}) == ("INFO", "text")
    assert logs.resolve(None, None, {"LOG_LEVEL": "debug", "LOG_FORMAT": "json"}) == ("DEBUG", "json")
    assert logs.resolve("error", "text", {"LOG_LEVEL": "debug", "LOG_FORMAT": "json"}) == ("ERROR", "text")
    with pytest.raises(ValueError, match="LOG_FORMAT: log format 'xml'"):
        logs.resolve(None, None, {"LOG_FORMAT": "xml"})
    with pytest.raises(ValueError, match="--log-level: log level 'LOUD'"):
        logs.resolve("LOUD", None, {})


def test_gunicorn_lines_take_our_format() -> None:
    gunicorn = pytest.importorskip("gunicorn.glogging")
    stream = io.StringIO()
    logger = logging.getLogger("tests.logs.gunicorn")
    logger.addHandler(logging.StreamHandler(stream))
    try:
        logs.adopt(logger, logs.JSON)
        logger.propagate = False
        logger.warning("Worker timeout", extra={"pid": 7})
        assert json.loads(stream.getvalue()) | {"time": ""} == {"time": "", "level": "WARNING", "logger": "tests.logs.gunicorn",
                                                                "message": "Worker timeout", "pid": 7}
    finally:
        logger.handlers.clear()
    assert gunicorn.Logger  # the class webhook/gunicorn.conf.py extends


def _probe(*args: object, **kwargs: object) -> None:
    logging.getLogger("egress_cni.probe").info("probe line", extra={"k": "v w", "n": 2})
    raise SystemExit(0)


@pytest.mark.parametrize("daemon", ["controller", "agent", "webhook"])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_daemon_prints_the_fields(daemon: str, fmt: str, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Each entry point sets up the shared logging before its first real step (here: log a line and exit)."""
    from egress_cni.agent import main as agent
    from egress_cni.controller import main as controller
    from webhook import main as webhook

    monkeypatch.setattr(os, "environ", {"LOG_FORMAT": fmt})  # the webhook exports its settings: keep them here
    run = {"controller": (controller.main, lambda: monkeypatch.setattr(controller.k8s.Client, "from_kubeconfig", _probe), []),
           "agent": (agent.main, lambda: monkeypatch.setattr(agent, "make_agent", _probe), ["run", "--node=n1"]),
           "webhook": (webhook.main, lambda: monkeypatch.setattr(webhook, "settle_certificates", _probe), [])}
    main, patch, argv = run[daemon]
    patch()
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        with pytest.raises(SystemExit):
            main(argv)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "probe line" in ln]
    if fmt == "json":
        assert json.loads(line) | {"time": ""} == {"time": "", "level": "INFO", "logger": "egress_cni.probe",
                                                   "message": "probe line", "k": "v w", "n": 2}
    else:
        assert line.endswith('INFO egress_cni.probe probe line k="v w" n=2')
