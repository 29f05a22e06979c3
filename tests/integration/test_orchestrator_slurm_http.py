"""GET /slurm/status/{task_id} and POST /queue/submit of gpu_slurm through a real orchestrator
daemon and the real single-node Slurm cluster (scripts/slurm_cluster.sh); env-manager is not
needed (nothing listens at its address)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_infra.wire import orchestrator_pb2 as pb
from agent_infra.wire import orchestrator_pb2_grpc

from tests.daemon_support import eventually, free_port, running_daemon
from tests.orchestrator_support import new_id
from tests.slurm_support import start_cluster

pytestmark = pytest.mark.timeout(600)

CONFIG = ('[slurm]\nenabled = true\npoll_interval = "200ms"\n'
          '[classes.gpu_slurm]\nconcurrency = 2\ndefault_timeout = 60\n')


async def test_slurm_status_follows_a_real_job(tmp_path: Path) -> None:
    start_cluster()
    config = tmp_path / "orchestrator.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"),
            "--env-managers", f"127.0.0.1:{free_port()}"]
    async with running_daemon("orchestrator", tmp_path, args=args) as daemon, \
            aiohttp.ClientSession() as session:
        async def call(method: str, path: str, body: object = None
                       ) -> tuple[int, dict[str, Any]]:
            async with session.request(method, daemon.http_url + path, json=body) as response:
                return response.status, await response.json()

        task_id = new_id("slurm-http")
        code, answer = await call("POST", "/queue/submit", {
            "id": task_id, "class": "gpu_slurm",
            "payload": {"command": "echo from-slurm; exit 3"}})
        assert code == 201, answer
        assert (answer["ok"], answer["id"], answer["status"]) == (True, task_id, "submitted")
        job_id = answer["slurm_job_id"]
        assert isinstance(job_id, str) and job_id.isdigit(), answer

        async def ended() -> bool:
            code, record = await call("GET", f"/slurm/status/{task_id}")
            assert code == 200, record
            return record["task_status"] in ("completed", "failed")
        await eventually(ended, "the Slurm job to end", timeout=120, interval=0.5)
        code, record = await call("GET", f"/slurm/status/{task_id}")
        assert code == 200, record
        assert (record["job_id"], record["slurm_job_id"]) == (job_id, job_id)
        assert record["task_status"] == "failed" and record["exit_code"] == 3, record
        assert record["state"] == "FAILED", record
        assert record["node"], record
        now = time.time()
        assert record["submit_time"] <= record["start_time"] <= record["end_time"] <= now + 5
        assert record["job_name"].startswith("agent-infra-")

        # A second submit of the same task answers the same job.
        code, again = await call("POST", "/queue/submit", {
            "id": task_id, "class": "gpu_slurm",
            "payload": {"command": "echo from-slurm; exit 3"}})
        assert code == 200 and again["slurm_job_id"] == job_id, again

        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(daemon.channel())
        figures = (await stub.GetMetrics(pb.GetMetricsRequest(
            metric_names=["slurm_jobs_*"]), timeout=30)).metrics
        assert dict(figures) == {"slurm_jobs_submitted_total": 1.0,
                                 "slurm_jobs_completed_total": 0.0,
                                 "slurm_jobs_failed_total": 1.0}
        code, missing = await call("GET", "/slurm/status/no-such-task")
        assert code == 404, missing
