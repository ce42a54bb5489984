"""`python -m mmchat publish`: the Space it would upload starts from its own folder and answers right."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures_app import serve_app
from gradio_client import Client, handle_file

from mmchat.serving import publish

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "mmchat-shapes"


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("space") / "space"
    assert publish.main(["space", "--dry-run", str(out), "--model-repo", "someone/mmchat-shapes"]) == 0
    return out


def test_the_space_holds_the_app_its_package_and_the_default_model(space):
    names = set(files_in(space))
    assert {"app.py", "requirements.txt", "README.md", ".gitattributes", "mmchat/serving/ui.py"} <= names
    assert files_in(space / "models" / "mmchat-shapes") == {
        k: v for k, v in files_in(SHIPPED).items() if "__pycache__" not in k
    }
    assert "*.safetensors filter=lfs" in (space / ".gitattributes").read_text()
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    meta = yaml.safe_load((space / "README.md").read_text().split("---\n")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["python_version"] == "3.11"
    assert meta["models"] == ["someone/mmchat-shapes"] and meta["suggested_hardware"] == "cpu-basic"
    # The Space's page shows this README: its relative links must land on files the Space has.
    for target in re.findall(r"\]\(([^)\s#]+)", (space / "README.md").read_text()):
        assert target.startswith("http") or (space / target).exists(), f"README link {target!r} is not in the Space"


def test_the_space_starts_from_its_folder_alone_and_answers_right(space, tmp_path):
    # The repository must not be importable from there, or the test would prove nothing.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import importlib.util; print(importlib.util.find_spec('mmchat') is None)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True).stdout.strip() == "True"
    examples = [e for e in json.loads((space / "assets" / "examples.json").read_text()) if "answer" in e]
    with serve_app([], tmp_path, app_dir=space) as url:
        client = Client(url, verbose=False)
        for example in examples:
            client.reset_session()
            image = handle_file(str(space / "assets" / example["file"]))
            reply = client.predict({"text": example["question"], "files": [image]}, 8, False, 0.7, api_name="/chat")
            assert reply[0] == example["answer"], (example, reply)
    log = (tmp_path / "app.log").read_text()
    assert "mmchat: serving mmchat-shapes" in log


def test_a_model_upload_is_the_folder_plus_gitattributes(tmp_path):
    out = tmp_path / "model"
    assert publish.main(["model", str(SHIPPED), "--dry-run", str(out)]) == 0
    staged = files_in(out)
    assert staged.pop(".gitattributes").decode().count("filter=lfs") >= 3
    assert staged == {k: v for k, v in files_in(SHIPPED).items() if "__pycache__" not in k}


class FakeHub:
    """Records what would reach the hub: the repo made, the files uploaded, the variables set."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        self.calls.append(("upload_folder", repo_id, repo_type, files_in(Path(folder_path))))
        return "https://huggingface.co/commit/x"

    def add_space_variable(self, repo_id, key, value):
        self.calls.append(("add_space_variable", repo_id, key, value))


def test_publishing_uploads_exactly_what_the_dry_run_writes(space, capsys):
    hub = FakeHub()
    argv = ["space", "--repo-id", "someone/mmchat", "--model-repo", "someone/mmchat-shapes", "--variable", "MMCHAT_QUANTIZATION=none"]
    assert publish.main(argv, api=hub) == 0
    create, uploaded, variable = hub.calls
    assert create == ("create_repo", "someone/mmchat", {"repo_type": "space", "private": False, "exist_ok": True, "space_sdk": "gradio"})
    assert uploaded[:3] == ("upload_folder", "someone/mmchat", "space") and uploaded[3] == files_in(space)
    assert variable == ("add_space_variable", "someone/mmchat", "MMCHAT_QUANTIZATION", "none")
    assert "uploaded" in capsys.readouterr().out


def test_bad_requests_are_refused_with_a_reason(tmp_path, capsys):
    with pytest.raises(SystemExit):
        publish.main(["model", str(SHIPPED)])  # neither --repo-id nor --dry-run
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert publish.main(["model", str(SHIPPED), "--dry-run", str(tmp_path / "full")]) == 2
    assert publish.main(["model", str(tmp_path), "--dry-run", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "holds no config.json" in err
