"""``scaisend send`` and ``scaisend instrument`` from the command line."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.testing import base_document

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "html"


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCAISEND_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("SCAISEND_CONFIG", None)
    env.pop("TRACKING_BASE_URL", None)
    return subprocess.run(
        [str(Path(sys.executable).parent / "scaisend"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=check,
    )


@pytest.fixture
def config(tmp_path) -> Path:
    document = base_document(tmp_path / "data")
    # Open tracking only, so the expected output is the input plus one pixel.
    document["tenants"]["acme"]["tracking"] = {"click_tracking": {"enable": False}}
    path = tmp_path / "scaisend.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def body(recipients: int) -> dict:
    return {
        "personalizations": [{"to": [{"email": f"r{n}@example.com"} for n in range(recipients)]}],
        "from": {"email": "news@example.org"},
        "subject": "CLI",
        "content": [{"type": "text/html", "value": "<html><body><p>Hi</p></body></html>"}],
    }


def test_send_delivers_every_recipient_to_the_outbox(tmp_path, config):
    (tmp_path / "body.json").write_text(json.dumps(body(30)))
    result = run("send", "--config", str(config), "--tenant", "acme", "body.json", cwd=tmp_path)
    message_id, counts = result.stdout.strip().split(": ")
    assert counts == "30 delivered, 0 deferred, 0 failed"
    assert "delivering" in result.stderr  # the progress bar
    assert len(list((tmp_path / "data" / "outbox").glob(f"{message_id}-*.eml"))) == 30


def test_send_refuses_a_bad_body_listing_every_problem(tmp_path, config):
    (tmp_path / "bad.json").write_text(json.dumps({"from": {"email": "nope"}}))
    result = run(
        "send", "-c", str(config), "--tenant", "acme", "bad.json", cwd=tmp_path, check=False
    )
    assert result.returncode == 2
    assert "personalizations: is required" in result.stderr
    assert "content: is required" in result.stderr
    assert "from.email" in result.stderr
    assert not (tmp_path / "data" / "outbox").exists() or not list(
        (tmp_path / "data" / "outbox").iterdir()
    )


def test_instrument_html_prints_the_recipients_html(tmp_path, config):
    source = sorted(CORPUS.rglob("*.html"))[0]
    result = run(
        "instrument",
        "-c",
        str(config),
        "--tenant",
        "acme",
        "--to",
        "ann@example.com",
        str(source),
        cwd=tmp_path,
    )
    original = source.read_text(encoding="utf-8")
    pixel = re.search(
        r'<img src="https://track\.example\.test/t/o/[^"]+\.gif"[^>]*/>', result.stdout
    )
    assert pixel
    assert result.stdout.replace(pixel.group(0), "", 1) == original
    assert not list((tmp_path / "data").glob("outbox/*"))  # a preview sends nothing


def test_instrument_eml_writes_the_whole_message(tmp_path, config):
    source = tmp_path / "in.eml"
    source.write_bytes(
        b"From: Shop <shop@example.org>\r\nTo: ann@example.com\r\nSubject: Sale\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><body><p>50% off</p></body></html>\r\n"
    )
    out = tmp_path / "out.eml"
    run(
        "instrument",
        "-c",
        str(config),
        "--tenant",
        "acme",
        str(source),
        "-o",
        str(out),
        cwd=tmp_path,
    )
    message = email.message_from_bytes(out.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "Sale"
    assert message["To"] == "ann@example.com"
    html = message.get_body(("html",)).get_content()
    assert html.startswith("<html><body><p>50% off</p><img ")
    assert "/t/o/" in html
