"""egress-webhook under gunicorn reads the installation's settings file and logs in the shared format:
the file's families reach the workers, its no-effect keys are logged with their field, and every line
of the master, the workers and gunicorn itself is a JSON object with `--log-format json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.webhook.builders import gateway, request
from tests.webhook.server import running_webhook

pytestmark = pytest.mark.process


def test_settings_file_reaches_the_workers_and_every_line_is_json(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("enableIPv6: false\ngatewayFailover: {enable: false, tunnelMonitorPeriod: 5}\nvxlan: {id: 100}\n")  # upstream's spelling
    env = {"EGRESS_CONFIG": str(config), "LOG_FORMAT": "json", "EGRESS_WEBHOOK_ACCESS_LOG": "-"}
    with running_webhook(tmp_path / "hook", state=[gateway(ipv4=["10.6.168.201"])], workers=1, env=env) as hook:
        body = {"request": request(gateway("v6", ipv6=["fd00::1"]))}
        answer = requests.post(hook.url + "/validate", data=json.dumps(body), verify=str(hook.ca_file), timeout=10).json()
    assert answer["response"]["allowed"] is False
    assert "IPv6 is not enabled in this installation" in answer["response"]["status"]["message"]
    lines = [json.loads(line) for line in hook.log.read_text().splitlines() if line.strip()]  # fails on any non-JSON line
    by_message = {(line["logger"], line["message"]): line for line in lines}
    assert by_message["webhook.main", "setting has no effect"]["note"].startswith("gatewayFailover.tunnelMonitorPeriod: 5")
    assert by_message["webhook.main", "serving mounted certificate"]["dir"].endswith("certs")
    assert any(logger == "gunicorn.error" and message.startswith("Booting worker") for logger, message in by_message)
    assert any(line["logger"] == "gunicorn.access" and "POST /validate" in line["message"] for line in lines)


def test_an_unknown_key_stops_the_webhook_with_its_name(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("tunnelIPV4Subnet: 10.0.0.0/16\n")
    with pytest.raises(RuntimeError, match=r"tunnelIPV4Subnet: unknown key \(did you mean tunnelIPv4Subnet or tunnelIpv4Subnet\?\)"), \
            running_webhook(tmp_path / "hook", state=[], workers=1, env={"EGRESS_CONFIG": str(config)}, timeout=30):
        pass
