"""The command line as users and evaluation tools call it: real processes, real model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.stack import FOUNDING, MODEL_CACHE, ROOT, Stack, make_stack

pytestmark = pytest.mark.timeout(300)

FOUNDING_REGIONS = {"iraq", "syria", "lebanon", "yemen", "red-sea", "israel", "gaza", "iran"}


def spillover(*args: str, cwd: Path = ROOT, stdin: str | None = None,
              **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m monitor ARGS` with the shared model cache and a private data dir."""
    base = {"PATH": "/usr/bin:/bin", "SPILLOVER_MODEL_CACHE": MODEL_CACHE, **env}
    return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=cwd, env=base,
                          input=stdin, capture_output=True, text=True, timeout=240, check=False)


def test_classify_contract_one_line_per_input_in_order(tmp_path: Path) -> None:
    """`classify --input` writes one JSON object per input line, in order, with exactly the
    contract's keys; the founding article is an escalation naming its regions; a sports item
    is not; an unreadable line gets an error object in its place and exit code 1."""
    lines = [
        json.dumps({"id": "founding", "title": "Regional spillover fears grow",
                    "summary": FOUNDING}),
        json.dumps({"id": "sport", "title": "Liverpool thrash Everton as strikers run riot",
                    "summary": "Liverpool crushed their rivals 4-0 in a one-sided derby battle."}),
        "not json",
        json.dumps({"id": "ar", "lang": "ar", "title": "غارات جوية على مواقع في جنوب لبنان",
                    "summary": "شنت طائرات حربية غارات على بلدات في جنوب لبنان فجر اليوم."}),
    ]
    done = spillover("classify", "--config", "config", "--input", "-", stdin="\n".join(lines),
                     SPILLOVER_DATA_DIR=str(tmp_path))
    assert done.returncode == 1, done.stderr[-2000:]
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o.get("id") for o in out] == ["founding", "sport", None, "ar"]
    founding, sport, bad, arabic = out
    assert set(founding) == {"id", "lang", "score", "escalation", "signals", "regions"}
    assert founding["escalation"] is True and founding["lang"] == "en"
    assert set(founding["regions"]) >= FOUNDING_REGIONS
    assert 0.0 <= sport["score"] < founding["score"] <= 1.0 and sport["escalation"] is False
    assert all(set(s) == {"name", "score"} for s in founding["signals"])
    assert "line 3" in bad["error"] and arabic["lang"] == "ar"


def test_classify_text_and_eval_explain_themselves(tmp_path: Path) -> None:
    """`classify --text` prints a readable explanation; `eval` prints P/R/F1 rows per
    language and overall from labelled lines."""
    done = spillover("classify", "--config", "config", "--text",
                     "Houthi missiles strike a tanker in the Red Sea off Hodeidah",
                     SPILLOVER_DATA_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "escalation: YES" in done.stdout and "red-sea" in done.stdout
    labelled = ROOT / "tests" / "data" / "escalation_en_ar.jsonl"
    done = spillover("eval", "--config", "config", "--input", str(labelled),
                     SPILLOVER_DATA_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:4]}
    assert set(rows) == {"ar", "en", "all"}
    assert all(0.0 <= float(v) <= 1.0 for r in rows.values() for v in r[2:5])


def test_check_lists_every_problem_with_file_and_hint(tmp_path: Path) -> None:
    """`check` exits 0 on the shipped config and 1 on a broken one, naming each file."""
    assert spillover("check", "--config", "config").returncode == 0
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    (config / "feeds.yaml").write_text("feeds:\n  - url: file:///etc/passwd\n", encoding="utf-8")
    wl = yaml.safe_load((config / "watchlists" / "middle-east.yaml").read_text(encoding="utf-8"))
    wl["keywords"] = [["ground", "offensive"]]
    (config / "watchlists" / "middle-east.yaml").write_text(yaml.safe_dump(wl), encoding="utf-8")
    done = spillover("check", "--config", str(config))
    assert done.returncode == 1
    assert "feeds.yaml" in done.stderr and "middle-east.yaml" in done.stderr
    assert "hint:" in done.stderr


def test_schema_and_opml_import_commands(tmp_path: Path) -> None:
    """`schema` writes one JSON Schema per YAML kind; `feeds import` adds an OPML's feeds."""
    done = spillover("schema", "--out", str(tmp_path / "schema"))
    assert done.returncode == 0
    assert {p.name for p in (tmp_path / "schema").iterdir()} >= {
        "feeds.schema.json", "watchlist.schema.json", "channels.schema.json"}
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    opml = tmp_path / "list.opml"
    opml.write_text('<?xml version="1.0"?><opml version="2.0"><body>'
                    '<outline text="New" xmlUrl="https://new.example.org/rss.xml"/>'
                    "</body></opml>", encoding="utf-8")
    done = spillover("feeds", "import", str(opml), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "https://new.example.org/rss.xml" in (config / "feeds.yaml").read_text(encoding="utf-8")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A loopback SMTP server and Slack stand-in with a config dir."""
    yield from make_stack(tmp_path)


def test_test_alert_sends_the_founding_sample_by_email(stack: Stack) -> None:
    """`test-alert --channel email` delivers the founding article's sample alert; an unknown
    channel is refused with the list of enabled ones."""
    done = stack.run("test-alert", "--config", "config", "--channel", "email")
    assert done.returncode == 0, done.stderr[-2000:]
    (msg,) = stack.emails()
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and "sample-founding-article" in body.get_content()
    refused = stack.run("test-alert", "--config", "config", "--channel", "pager")
    assert refused.returncode == 1 and "enabled channels" in refused.stderr
