"""Three members on data imported with `mor data import` (larger JPEGs, domain "radiology"): a built-in, a
local Hugging Face checkpoint and an entry-point plugin, each `mor client train`ed under DP, then each scores
its task in a real round over mutual TLS (agent processes), with receipts and audit logs verified."""

from __future__ import annotations

import csv
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers.consortium import server_data, write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, start_agent, start_server, write_server_config
from test_rewards_any_arch import PLUGIN, build_tiny_llama

from audit import verify_log
from client_agent.config import load_agent_config
from client_agent.ledger import TaskLedger
from corpus.builders import build_calibration_set, build_client_pairs
from crypto.signing import SigningKey
from mor_cli.main import main
from server.rounds import prompt_payload
from server.state import StateStore
from wire.messages import TaskPayload

pytestmark = pytest.mark.timeout(420)
MEMBERS = {"builtin": ("frozen-mlp", "{ hidden = 16 }"), "hf": ("hf-text", None), "plugin": (None, "{ buckets = 32 }")}


def _import_member_data(tmp: Path) -> Path:
    """The built-in medical pairs re-exported as a member would have them: 96x80 JPEGs and a CSV."""
    images = tmp / "scans"
    images.mkdir()
    with open(tmp / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "question", "domain", "chosen", "rejected", "ward"])
        for i, pair in enumerate(build_client_pairs("medical", 40, seed=0)):
            pair.prompt.image.resize((96, 80)).save(images / f"scan-{i:03d}.jpg", quality=95)
            writer.writerow([f"scan-{i:03d}.jpg", pair.prompt.question, "radiology", pair.chosen, pair.rejected,
                             f"w{i % 3}"])
    assert main(["data", "import", "--table", str(tmp / "pairs.csv"), "--images", str(images), "--out",
                 str(tmp / "member-data"), "--kind", "pairs"]) == 0
    return tmp / "member-data"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("any-arch-round")
    (tmp / "member_rm_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(tmp))
    data = _import_member_data(tmp)
    llama = build_tiny_llama(tmp / "tiny-llama")
    pki = make_pki(tmp)
    policy = write_policy(tmp / "policy.toml", mode="ckks", pilot=True)
    port = free_port()
    configs = {}
    for name, (arch, params) in MEMBERS.items():
        party = pki.issue(name)
        out = tmp / f"{name}.toml"
        assert main(["client", "init-config", "--out", str(out), "--server-url", f"https://127.0.0.1:{port}",
                     "--server-identity", pki.server.identity, "--policy", str(policy), "--cert", str(party.cert),
                     "--key", str(party.key), "--ca", str(pki.ca_cert), "--crl", str(pki.crl),
                     "--data-dir", str(data), "--state-dir", str(tmp / f"{name}-state"),
                     "--epsilon", "6", "--delta", "1e-5", "--insecure-pilot"]) == 0
        arch = arch or "member_rm_plugin:build"
        params = params or f'{{ path = "{llama}", lora_r = 4, max_len = 48 }}'
        text = out.read_text().replace('arch = "frozen-mlp"', f'arch = "{arch}"')
        text = text.replace("params = {  }", f"params = {params}").replace("epochs = 5", "epochs = 2")
        text = text.replace("batch_size = 64", "batch_size = 20").replace("retry_base_s = 0.5", "retry_base_s = 0.2")
        out.write_text(text.replace("retry_max_s = 30.0", "retry_max_s = 1.0"))
        with pytest.warns(UserWarning):
            assert main(["client", "train", "--config", str(out), "--quiet"]) == 0
        configs[name] = out
    yield {"pki": pki, "policy": policy, "port": port, "configs": configs, "tmp": tmp}
    sys.path.remove(str(tmp))


def _status(config: Path, task_id: str) -> str | None:
    with TaskLedger.open(load_agent_config(config, check_policy=False).ledger_path) as ledger:
        entry = ledger.get(task_id)
    return entry.status if entry else None


def test_three_architectures_score_one_round_over_mtls(world: dict[str, Any]) -> None:
    tmp = world["tmp"]
    server_config = write_server_config(tmp, world["pki"], policy=world["policy"], port=world["port"])
    env = {"PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])}
    agents = {name: start_agent(path, log=tmp / f"{name}.log", env=env) for name, path in world["configs"].items()}
    try:
        with start_server(server_config):
            store = StateStore(server_data(server_config)["database_url"])
            ids = {name: load_agent_config(path, check_policy=False).identity()
                   for name, path in world["configs"].items()}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(store.agent(i) is None for i in ids.values()):
                time.sleep(0.3)
            assert all(store.agent(i) is not None for i in ids.values()), [
                (tmp / f"{n}.log").read_text()[-2000:] for n in ids]
            candidates = build_calibration_set(6, seed=5)
            prompts = [prompt_payload(p) for p, _ in candidates[:3]]
            items = [{"prompt_index": i % 3, "response": candidates[i][1]} for i in range(6)]
            tasks = {name: f"t-{uuid.uuid4().hex[:8]}" for name in ids}
            payload = TaskPayload(kind="score", prompts=prompts, items=items).model_dump()
            store.create_round(f"score-{uuid.uuid4().hex[:8]}", kind="score", n_items=6,
                               deadline=time.time() + 120, now=time.time(),
                               task_payloads={ids[n]: (tasks[n], payload) for n in ids})
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(_status(world["configs"][n], t) != "receipted"
                                                      for n, t in tasks.items()):
                time.sleep(0.3)
            statuses = {n: _status(world["configs"][n], t) for n, t in tasks.items()}
            assert statuses == dict.fromkeys(ids, "receipted"), [(tmp / f"{n}.log").read_text()[-2000:] for n in ids]
            assert all(store.submission(t) is not None for t in tasks.values())
            store.engine.dispose()
    finally:
        for agent in agents.values():
            agent.kill()
    for path in world["configs"].values():
        config = load_agent_config(path, check_policy=False)
        report = verify_log(config.audit_dir, SigningKey.load(config.signing_key_path).verify_key())
        assert report.ok, report.problems
