"""env_manager.v1 protobuf messages -> the client's dataclasses (env_manager_models)."""

from __future__ import annotations

from agent_infra.wire import env_manager_pb2 as pb

from . import env_manager_models as models


def status_update(message: pb.ServiceStatusUpdate) -> models.ServiceStatusUpdate:
    return models.ServiceStatusUpdate(service_name=message.service_name, status=message.status,
                                      message=message.message, progress=message.progress)


def stop_result(message: pb.StopServicesResponse) -> models.StopServicesResult:
    return models.StopServicesResult(success=message.success,
                                     service_results=dict(message.service_results))


def restart_result(message: pb.RestartServiceResponse) -> models.RestartServiceResult:
    return models.RestartServiceResult(success=message.success, message=message.message)


def service_status(message: pb.ServiceStatus) -> models.ServiceStatus:
    usage = message.resource_usage if message.HasField("resource_usage") else None
    return models.ServiceStatus(
        name=message.name,
        status=message.status,
        container_id=message.container_id,
        ports=tuple(message.ports),
        health_checks=dict(message.health_checks),
        started_at=message.started_at,
        resource_usage=models.ResourceUsage(
            cpu_percent=usage.cpu_percent, memory_bytes=usage.memory_bytes,
            network_rx_bytes=usage.network_rx_bytes, network_tx_bytes=usage.network_tx_bytes,
        ) if usage is not None else None,
    )


def services_status(message: pb.ServicesStatusResponse) -> dict[str, models.ServiceStatus]:
    return {name: service_status(status) for name, status in message.services.items()}


def health_update(message: pb.HealthUpdate) -> models.HealthUpdate:
    return models.HealthUpdate(service_name=message.service_name, healthy=message.healthy,
                               message=message.message, timestamp=message.timestamp,
                               details=dict(message.details))


def availability(message: pb.ResourceAvailabilityResponse) -> models.ResourceAvailability:
    hardware = message.hardware
    return models.ResourceAvailability(
        available=message.available,
        capacity=message.capacity,
        in_use=message.in_use,
        hardware=models.HardwareInfo(
            cpu_cores=hardware.cpu_cores,
            memory_bytes=hardware.memory_bytes,
            gpus=tuple(models.GPU(index=gpu.index, name=gpu.name,
                                  memory_bytes=gpu.memory_bytes,
                                  utilization_percent=gpu.utilization_percent)
                       for gpu in hardware.gpus),
        ),
        workload_contracts=dict(message.workload_contracts),
    )


def task_execution(message: pb.ExecuteTaskResponse) -> models.TaskExecution:
    return models.TaskExecution(success=message.success, result=dict(message.result),
                                error=message.error, latency_ms=message.latency_ms)


def pull_progress(message: pb.ImagePullProgress) -> models.ImagePullProgress:
    return models.ImagePullProgress(image_name=message.image_name, status=message.status,
                                    current=message.current, total=message.total,
                                    progress_percent=message.progress_percent,
                                    message=message.message)


def log_entry(message: pb.LogEntry) -> models.LogEntry:
    return models.LogEntry(service_name=message.service_name, container_id=message.container_id,
                           stream=message.stream, message=message.message,
                           timestamp=message.timestamp)
