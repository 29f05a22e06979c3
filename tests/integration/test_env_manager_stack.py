"""env-manager's stack RPCs end to end: a real daemon, a real engine, real containers."""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime
from pathlib import Path

import aiodocker
import grpc
from agent_infra.wire import env_manager_pb2 as pb
from agent_infra.wire import env_manager_pb2_grpc

from tests.daemon_support import free_port, running_daemon
from tests.env_support import (
    EXEC_READY,
    busybox_service,
    env_manager,
    ready_after,
    rpc_error,
)


async def _started_at(docker: aiodocker.Docker, container_id: str) -> datetime:
    info = await docker.containers.get(container_id)
    text = info["State"]["StartedAt"]
    # Docker gives nanoseconds; datetime takes microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}")


FOUR_LEVELS = "".join([
    busybox_service("a", ready_after(1.5), extra=EXEC_READY),
    busybox_service("b", ready_after(1.5), extra=EXEC_READY),
    busybox_service("c", ready_after(1.5), depends_on='a = "healthy"', extra=EXEC_READY),
    busybox_service("d", ready_after(1.5), depends_on='b = "healthy"', extra=EXEC_READY),
    busybox_service("e", ready_after(0.5), depends_on='c = "healthy", d = "healthy"',
                    extra=EXEC_READY),
    busybox_service("f", "exec sleep 1d", depends_on='e = "started"'),
])


async def test_four_levels_start_in_order_with_parallel_levels(
    tmp_path: Path, docker: aiodocker.Docker
) -> None:
    async with env_manager(tmp_path, FOUR_LEVELS) as em:
        updates = await em.start()
        final = {u.service_name: u for u in updates}
        assert {name: u.status for name, u in final.items()} == dict.fromkeys("abcdef", "healthy")
        assert updates[-1].progress == 100
        progress = [u.progress for u in updates]
        assert progress == sorted(progress), "progress never goes back"

        status = await em.status()
        started = {name: await _started_at(docker, s.container_id) for name, s in status.items()}
        # Dependency order: nobody starts before what it depends on.
        for child, parents in {"c": "a", "d": "b", "e": "cd", "f": "e"}.items():
            for parent in parents:
                assert started[child] > started[parent], (child, parent, started)
        # Parallel levels overlap: each pair started well within the 1.5 s it takes one of
        # them to become healthy, so neither waited for the other.
        for left, right in (("a", "b"), ("c", "d")):
            gap = abs((started[left] - started[right]).total_seconds())
            assert gap < 1.0, (left, right, gap)
        # A level waits for readiness, not just the start of the one below.
        assert (started["c"] - started["a"]).total_seconds() >= 1.4


async def test_sequential_start_when_not_parallel(
    tmp_path: Path, docker: aiodocker.Docker
) -> None:
    services = "".join(busybox_service(n, ready_after(1), extra=EXEC_READY) for n in "xy")
    async with env_manager(tmp_path, services) as em:
        updates = await em.start(parallel=False)
        assert {u.service_name for u in updates if u.status == "healthy"} == {"x", "y"}
        status = await em.status()
        x, y = [await _started_at(docker, status[n].container_id) for n in "xy"]
        # One at a time: the second container starts only after the first is healthy.
        assert abs((y - x).total_seconds()) >= 0.9


async def test_failing_health_check_blocks_dependents(tmp_path: Path) -> None:
    services = (
        busybox_service("sick", "exec sleep 1d",
                        extra='healthcheck = { type = "exec", command = ["false"], '
                              'interval = "1s" }\n')
        + busybox_service("needs-sick", "exec sleep 1d", depends_on='sick = "healthy"')
        + busybox_service("independent", "exec sleep 1d")
    )
    async with env_manager(tmp_path, services, health_timeout="3s") as em:
        final = {u.service_name: u for u in await em.start()}
        assert final["sick"].status == "unhealthy"
        assert "not healthy after 3s" in final["sick"].message
        assert final["needs-sick"].status == "stopped"
        assert "dependency sick did not become healthy" in final["needs-sick"].message
        assert final["independent"].status == "healthy"
        status = await em.status()
        assert status["needs-sick"].container_id == "", "a blocked dependent gets no container"
        assert status["sick"].status == "unhealthy"


async def test_stop_takes_dependents_first_and_reports_each(tmp_path: Path) -> None:
    services = (busybox_service("base", "exec sleep 1d")
                + busybox_service("mid", "exec sleep 1d", depends_on='base = "started"')
                + busybox_service("top", "exec sleep 1d", depends_on='mid = "started"')
                + busybox_service("other", "exec sleep 1d"))
    async with env_manager(tmp_path, services) as em:
        await em.start()
        response = await em.stub.StopServices(
            pb.StopServicesRequest(service_names=["mid"], timeout_seconds=5), timeout=60)
        assert response.success
        assert dict(response.service_results) == {"mid": "stopped", "top": "stopped"}
        status = await em.status()
        assert {n: s.status for n, s in status.items()} == {
            "base": "running", "mid": "stopped", "top": "stopped", "other": "running"}

        error = await rpc_error(em.stub.StopServices(
            pb.StopServicesRequest(service_names=["nope", "base"]), timeout=30))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in (error.details() or "")

        everything = await em.stub.StopServices(pb.StopServicesRequest(), timeout=60)
        assert everything.success
        assert everything.service_results["base"] == "stopped"
        assert everything.service_results["top"] == "not running"


async def test_same_config_is_adopted_and_a_change_recreates(tmp_path: Path) -> None:
    # Overrides are the registry's to allow: this service allows its env.
    services = busybox_service("svc", "exec sleep 1d", extra='overridable = ["env"]\n')
    async with env_manager(tmp_path, services) as em:
        await em.start()
        first = (await em.status())["svc"].container_id
        again = await em.start()
        assert "adopted" in " ".join(u.message for u in again)
        assert (await em.status())["svc"].container_id == first
        changed = await em.start(overrides={"svc.env.MODE": "fast"})
        assert "recreated" in " ".join(u.message for u in changed)
        assert (await em.status())["svc"].container_id != first

        error = await rpc_error(em.stub.StartServices(
            pb.StartServicesRequest(overrides={"svc.privileged": "true"}), timeout=30
        ).read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "svc.privileged" in (error.details() or "")


async def test_kill_9_mid_start_then_restart_adopts_without_duplicates(
    tmp_path: Path, docker: aiodocker.Docker
) -> None:
    services = "".join([
        busybox_service("one", ready_after(0.2), extra=EXEC_READY),
        busybox_service("two", ready_after(3), depends_on='one = "healthy"',
                        extra=EXEC_READY),
        busybox_service("three", "exec sleep 1d", depends_on='two = "healthy"'),
    ])
    async with env_manager(tmp_path, services) as em:
        call = em.stub.StartServices(pb.StartServicesRequest(parallel=True), timeout=60)
        async for update in call:
            if update.service_name == "two" and update.message == "container started":
                break
        before = await em.status()
        em.daemon.signal(signal.SIGKILL)
        assert await em.daemon.wait_exit() == -signal.SIGKILL
        call.cancel()

        async with running_daemon(
            "env-manager", tmp_path,
            args=["--config", str(em.config), "--state-dir", str(tmp_path / "state")],
        ) as second:
            stub = env_manager_pb2_grpc.EnvManagerServiceStub(second.channel())
            updates = [u async for u in stub.StartServices(
                pb.StartServicesRequest(parallel=True), timeout=60)]
            messages = {u.service_name: u.message for u in updates if u.status == "starting"}
            assert "adopted" in messages["one"] and "adopted" in messages["two"]
            after = (await stub.GetServicesStatus(pb.GetServicesStatusRequest(),
                                                  timeout=30)).services
            for name in ("one", "two"):
                assert after[name].container_id == before[name].container_id
            assert after["three"].status == "running"
            for name in ("one", "two", "three"):
                found = await docker.containers.list(all=True, filters={"label": [
                    f"org.agent-infra.stack={em.stack}", f"org.agent-infra.service={name}"]})
                assert len(found) == 1, f"{name}: {len(found)} containers"
            await stub.StopServices(pb.StopServicesRequest(), timeout=60)


async def test_container_killed_from_outside_shows_in_stream_health(
    tmp_path: Path, docker: aiodocker.Docker
) -> None:
    services = (busybox_service("victim", "exec sleep 1d")
                + busybox_service("bystander", "exec sleep 1d"))
    async with env_manager(tmp_path, services) as em:
        await em.start()
        stream = em.stub.StreamHealth(pb.StreamHealthRequest(interval_seconds=1), timeout=120)
        first = [await stream.read() for _ in range(2)]
        assert {u.service_name: u.healthy for u in first} == {"victim": True,
                                                                "bystander": True}
        victim = (await em.status("victim"))["victim"].container_id
        await (await docker.containers.get(victim)).kill()
        async with asyncio.timeout(30):
            while True:
                update = await stream.read()
                if update.service_name == "victim":
                    break
        assert not update.healthy
        assert "exited" in update.message
        assert update.timestamp > 0
        stream.cancel()


async def test_logs_tell_stdout_from_stderr_and_follow_ends_with_the_container(
    tmp_path: Path,
) -> None:
    services = busybox_service(
        "talker", "echo out-1; echo err-1 >&2; sleep 2; echo out-2; sleep 1")
    async with env_manager(tmp_path, services) as em:
        await em.start()
        lines: list[pb.LogEntry] = []
        async with asyncio.timeout(30):
            async for entry in em.stub.StreamLogs(
                pb.StreamLogsRequest(service_name="talker", follow=True), timeout=60
            ):
                lines.append(entry)
        assert {(e.stream, e.message) for e in lines} >= {
            ("stdout", "out-1"), ("stderr", "err-1"), ("stdout", "out-2")}
        assert all(e.container_id and e.timestamp > 0 for e in lines)
        tail = [e async for e in em.stub.StreamLogs(
            pb.StreamLogsRequest(service_name="talker", tail=1), timeout=30)]
        assert len(tail) <= 2  # the last line of each stream

        error = await rpc_error(em.stub.StreamLogs(
            pb.StreamLogsRequest(service_name="ghost"), timeout=30).read())
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = await rpc_error(em.stub.StreamLogs(pb.StreamLogsRequest(), timeout=30).read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_restart_rechecks_and_gives_a_new_container(tmp_path: Path) -> None:
    services = (busybox_service("dep", ready_after(0.2), extra=EXEC_READY)
                + busybox_service("app", "exec sleep 1d", depends_on='dep = "healthy"'))
    async with env_manager(tmp_path, services) as em:
        await em.start()
        before = (await em.status())["app"].container_id
        response = await em.stub.RestartService(
            pb.RestartServiceRequest(service_name="app", timeout_seconds=2), timeout=60)
        assert response.success, response.message
        assert (await em.status())["app"].container_id != before
        error = await rpc_error(em.stub.RestartService(
            pb.RestartServiceRequest(service_name="nope"), timeout=30))
        assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_status_reports_live_usage_and_health(tmp_path: Path) -> None:
    services = busybox_service(
        "web", "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 8080 -h /www",
        extra=f'ports = ["{free_port()}:8080"]\n'
              'healthcheck = { type = "http", port = 8080 }\n')
    async with env_manager(tmp_path, services) as em:
        await em.start()
        web = (await em.status("web"))["web"]
        assert web.status == "running"
        assert len(web.container_id) == 64
        assert web.ports and web.started_at > 0
        assert web.health_checks["type"] == "http"
        assert web.health_checks["healthy"] == "true"
        assert web.resource_usage.memory_bytes > 0


async def test_sighup_reload_adds_services_and_keeps_old_registry_when_bad(
    tmp_path: Path,
) -> None:
    async with env_manager(tmp_path, busybox_service("first", "exec sleep 1d")) as em:
        original = em.config.read_text()
        em.config.write_text(original + busybox_service("second", "exec sleep 1d"))
        em.daemon.notify.messages.clear()
        em.daemon.signal(signal.SIGHUP)
        await em.daemon.notify.wait_for("READY")
        updates = await em.start("second")
        assert updates[-1].status == "healthy"

        em.config.write_text(original + busybox_service(
            "third", "exec sleep 1d", depends_on='ghost = "started"'))
        em.daemon.notify.messages.clear()
        em.daemon.signal(signal.SIGHUP)
        await em.daemon.notify.wait_for("READY")
        assert "services.third.depends_on: unknown service 'ghost'" in em.daemon.log_text()
        error = await rpc_error(em.stub.StartServices(
            pb.StartServicesRequest(service_names=["third"]), timeout=30).read())
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert set(await em.status()) == {"first", "second"}
