"""The seed's notifiers, method for method, publishing to modelcast. Each `on_*` method builds
the seed's message with its fields (validated by the generated models) and publishes it;
arguments that cannot be mapped raise `MappingError` before anything is sent.

A notifier keeps what a message needs from earlier calls (a download's status and size, its
retry count), as the seed's in-process notifiers did."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

from pydantic import BaseModel, RootModel, TypeAdapter, ValidationError

from . import models
from .errors import MappingError
from .publisher import Accepted, Audience, Publisher


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _mapping(value: Any, model: type[BaseModel], what: str, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """`value` (a dict, or an instance of `model`) as field values of `model`, with `fixed`
    fields set by the caller. Keys that are not fields of the message are refused by name."""
    if isinstance(value, model):
        value = value.model_dump(exclude_none=True)
    if not isinstance(value, Mapping):
        raise MappingError(f"{what} must be a dict (or models.{model.__name__}), not {type(value).__name__}")
    allowed = set(model.model_fields) - set(fixed)
    unknown = sorted(set(value) - allowed - set(fixed))
    if unknown:
        raise MappingError(
            f"{what}: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a field of "
            f"{model.__name__}; known: {', '.join(sorted(allowed))}"
        )
    return {**value, **fixed}


def _known_values(annotation: Any) -> list[str] | None:
    """The known values of an open vocabulary (a `RootModel` of string literals or any other
    string), which the server accepts only from that list when publishing; else `None`."""
    if not (isinstance(annotation, type) and issubclass(annotation, RootModel)):
        return None
    args = typing.get_args(annotation.model_fields["root"].annotation)
    known = [typing.get_args(a)[0] for a in args if typing.get_origin(a) is typing.Literal]
    return known or None


def _value_problems(model: type[BaseModel], fields: dict[str, Any]) -> list[str]:
    """Every problem of the given values alone (types, closed vocabularies), field by field, so
    that one error names them all before any is used. A value the message's type accepts in
    another form (`"45.5"` for a number, as the message itself would take it) is replaced by
    that form in `fields`, so that what is derived from it is computed on the number."""
    problems = []
    for name, value in fields.items():
        field = model.model_fields.get(name)
        if field is None or value is None:
            continue
        try:
            checked = TypeAdapter(field.annotation).validate_python(value)
        except ValidationError as error:
            problems.extend(f"{name}: {e['msg']} (got {value!r})" for e in error.errors())
            continue
        if isinstance(checked, (bool, int, float)) and not isinstance(value, (bool, int, float)):
            fields[name] = checked
        known = _known_values(field.annotation)
        if known is not None and value not in known:
            problems.append(f"{name}: {value!r} is not a known value; expected one of: {', '.join(known)}")
    return problems


def _build(model: type[BaseModel], fields: dict[str, Any], what: str) -> BaseModel:
    """The message, or a `MappingError` naming every problem at once: values of the wrong type
    or outside a closed vocabulary, and missing fields."""
    fields.setdefault("timestamp", _now())
    problems = _value_problems(model, fields)
    try:
        built = model.model_validate(fields)
    except ValidationError as error:
        given = {p.split(":", 1)[0] for p in problems}
        problems.extend(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors() if str(e["loc"][0]) not in given
        )
        raise MappingError(f"{what}: {'; '.join(problems)}") from error
    if problems:
        raise MappingError(f"{what}: {'; '.join(problems)}")
    return built


_N = TypeVar("_N", bound="_Notifier")


class _Notifier:
    def __init__(self, publisher: Publisher, audience: Audience | None = None) -> None:
        self.publisher = publisher
        self.audience = audience
        self._audiences: dict[Audience, _Notifier] = {}

    def to(self: _N, audience: Audience) -> _N:
        """This notifier publishing to `audience` only (e.g. one user's downloads): one per
        audience, kept, so a download notifier tracks each audience's downloads apart."""
        if audience not in self._audiences:
            self._audiences[audience] = type(self)(self.publisher, audience)
        return typing.cast(_N, self._audiences[audience])

    async def _publish(self, model: type[BaseModel], what: str, **fields: Any) -> Accepted:
        return await self.publisher.publish(_build(model, fields, what), audience=self.audience)

    async def _publish_mapped(
        self, model: type[BaseModel], what: str, value: Any, argument: str, fixed: Mapping[str, Any]
    ) -> Accepted:
        """Publishes a message whose fields come from the caller's dict `value` (see `_mapping`)."""
        return await self._publish(model, what, **_mapping(value, model, argument, fixed))


class DownloadNotifier(_Notifier):
    """`download_progress`: progress, state changes (started, paused, resumed, cancelled,
    completed, failed, retrying) and retries."""

    def __init__(self, publisher: Publisher, audience: Audience | None = None) -> None:
        super().__init__(publisher, audience)
        self._status: dict[str, str] = {}
        self._percent: dict[str, float] = {}
        self._total: dict[str, float] = {}

    async def on_download_started(self, model_id: str, total_mb: float | None = None) -> Accepted:
        """A download started (`download_status_change`, event `started`)."""
        if total_mb is not None:
            sizes = {"total_mb": total_mb}
            problems = _value_problems(models.DownloadProgressUpdate, sizes)
            if problems:
                raise MappingError(f"total_mb: {'; '.join(problems)}")
            self._total[model_id] = sizes["total_mb"]
        self._percent[model_id] = 0.0
        return await self._change(model_id, "downloading", "started", "Download started")

    async def on_download_progress(self, model_id: str, progress_data: Mapping[str, Any]) -> Accepted:
        """Progress (`download_progress_update`). `progress_data` holds the message's fields:
        `progress_percent` and/or `downloaded_mb` with `total_mb`, `speed_mbps`,
        `eta_seconds`, `status`, `can_pause`/`can_resume`/`can_cancel`; what is missing is
        derived (percent from sizes, ETA from speed, the `can_*` flags from the status)."""
        d = _mapping(progress_data, models.DownloadProgressUpdate, "progress_data", {"model_id": model_id})
        problems = _value_problems(models.DownloadProgressUpdate, d)
        if problems:  # before anything is derived from them
            raise MappingError(f"progress_data: {'; '.join(problems)}")
        total = d.get("total_mb", self._total.get(model_id))
        if total is None:
            raise MappingError("progress_data: 'total_mb' is needed (here or in on_download_started)")
        d["total_mb"] = total
        if "progress_percent" not in d and "downloaded_mb" not in d:
            raise MappingError("progress_data: give 'progress_percent' or 'downloaded_mb'")
        if "progress_percent" not in d:
            if total and d["downloaded_mb"] > total:
                raise MappingError(
                    f"progress_data: downloaded_mb ({d['downloaded_mb']}) is more than total_mb ({total}), "
                    "so progress_percent cannot be derived from them"
                )
            d["progress_percent"] = round(d["downloaded_mb"] / total * 100, 2) if total else 0.0
        d.setdefault("downloaded_mb", round(d["progress_percent"] / 100 * total, 3))
        d.setdefault("speed_mbps", 0.0)
        status = d.setdefault("status", self._status.get(model_id, "downloading"))
        if "eta_seconds" not in d and status == "downloading" and d["speed_mbps"] > 0:
            d["eta_seconds"] = round(max(total - d["downloaded_mb"], 0) / d["speed_mbps"], 1)
        d.setdefault("can_pause", status == "downloading")
        d.setdefault("can_resume", status == "paused")
        d.setdefault("can_cancel", status not in ("completed", "failed", "cancelled"))
        self._status[model_id] = status
        self._percent[model_id] = d["progress_percent"]
        self._total[model_id] = total
        return await self._publish(models.DownloadProgressUpdate, "on_download_progress", **d)

    async def on_download_paused(self, model_id: str, reason: str = "Paused") -> Accepted:
        """The download was paused."""
        return await self._change(model_id, "paused", "paused", reason)

    async def on_download_resumed(self, model_id: str, reason: str = "Download resumed") -> Accepted:
        """The download was resumed."""
        return await self._change(model_id, "downloading", "resumed", reason)

    async def on_download_cancelled(self, model_id: str, reason: str = "Cancelled") -> Accepted:
        """The download was cancelled."""
        return await self._change(model_id, "cancelled", "cancelled", reason)

    async def on_download_completed(self, model_id: str) -> Accepted:
        """The download finished."""
        self._percent[model_id] = 100.0
        return await self._change(model_id, "completed", "completed", "Download completed")

    async def on_download_failed(self, model_id: str, error_message: str) -> Accepted:
        """The download failed for good."""
        return await self._change(model_id, "failed", "failed", "Download failed", error_message)

    async def on_download_retry(
        self,
        model_id: str,
        retry_count: int,
        max_retries: int,
        error_message: str,
        next_retry_in_seconds: float,
    ) -> list[Accepted]:
        """A failed attempt is retried after a backoff: `download_status_change` (retrying) and
        `download_retry`."""
        change = await self._change(model_id, "retrying", "retrying", "Retrying after an error", error_message)
        retry = await self._publish(
            models.DownloadRetry,
            "on_download_retry",
            model_id=model_id,
            retry_count=retry_count,
            max_retries=max_retries,
            error_message=error_message,
            next_retry_in_seconds=next_retry_in_seconds,
        )
        return [change, retry]

    async def _change(
        self, model_id: str, new: str, event: str, reason: str, error_message: str | None = None
    ) -> Accepted:
        old = self._status.get(model_id, "queued")
        self._status[model_id] = new
        return await self._publish(
            models.DownloadStatusChange,
            f"on_download_{event}",
            model_id=model_id,
            old_status=old,
            new_status=new,
            event=event,
            progress_percent=self._percent.get(model_id, 0.0),
            reason=reason,
            error_message=error_message,
        )


class HealthNotifier(_Notifier):
    """`health_monitoring`: health check results, corruption, performance degradation, repairs."""

    async def on_health_check_completed(self, model_id: str, health_data: Mapping[str, Any]) -> Accepted:
        """A health check's result (`health_monitoring_alert`); `health_data` holds its fields
        (`health_status`, `is_healthy`, `integrity_score`, `file_count`, `total_size_mb`,
        `issues`)."""
        d = _mapping(health_data, models.HealthMonitoringAlert, "health_data", {"model_id": model_id})
        if "is_healthy" not in d and "health_status" in d:
            d["is_healthy"] = d["health_status"] == "healthy"
        return await self._publish(models.HealthMonitoringAlert, "on_health_check_completed", **d)

    async def on_corruption_detected(
        self,
        model_id: str,
        corruption_type: str,
        severity: str,
        repair_action: str = "re-download",
        requires_user_action: bool = False,
    ) -> Accepted:
        """Corruption found (`corruption_detection`), e.g. `("t2v-a14b", "checksum_mismatch", "high")`."""
        return await self._publish(
            models.CorruptionDetection,
            "on_corruption_detected",
            model_id=model_id,
            corruption_type=corruption_type,
            severity=severity,
            repair_action=repair_action,
            requires_user_action=requires_user_action,
        )

    async def on_performance_degradation(
        self,
        model_id: str,
        metric: str,
        baseline_value: float,
        current_value: float,
        recommendation: str | None = None,
    ) -> Accepted:
        """A metric is worse than its baseline (higher is worse); the severity follows the
        degradation: ≥ 100% critical, ≥ 50% high, ≥ 20% medium, else low."""
        percent = (current_value - baseline_value) / abs(baseline_value) * 100 if baseline_value else 0.0
        severity = "critical" if percent >= 100 else "high" if percent >= 50 else "medium" if percent >= 20 else "low"
        return await self._publish(
            models.PerformanceDegradation,
            "on_performance_degradation",
            model_id=model_id,
            metric=metric,
            baseline_value=baseline_value,
            current_value=current_value,
            degradation_percent=round(percent, 2),
            severity=severity,
            recommendation=recommendation,
        )

    async def on_repair_started(self, model_id: str, repair_action: str) -> Accepted:
        """An automatic repair started (`model_repair`, phase `started`)."""
        return await self._repair(model_id, "started", repair_action, None)

    async def on_repair_completed(
        self, model_id: str, repair_action: str, success: bool = True, message: str | None = None
    ) -> Accepted:
        """An automatic repair finished (phase `completed`, or `failed` when not `success`)."""
        return await self._repair(model_id, "completed" if success else "failed", repair_action, message)

    async def _repair(self, model_id: str, phase: str, action: str, message: str | None) -> Accepted:
        return await self._publish(
            models.ModelRepair,
            f"on_repair_{phase}",
            model_id=model_id,
            phase=phase,
            repair_action=action,
            message=message,
        )


class AvailabilityNotifier(_Notifier):
    """`model_status` and `analytics_updates`: status, availability changes, batches,
    lifecycle, cleanup and priority recommendations."""

    async def on_model_status_update(self, model_id: str, status_data: Mapping[str, Any]) -> Accepted:
        """A model's full status (`model_status_update`); `status_data` holds its fields."""
        return await self._publish_mapped(
            models.ModelStatusUpdate, "on_model_status_update", status_data, "status_data", {"model_id": model_id}
        )

    async def on_model_availability_changed(
        self, model_id: str, old_availability: str, new_availability: str, reason: str
    ) -> Accepted:
        """A model's availability changed (`model_availability_change`)."""
        return await self._publish(
            models.ModelAvailabilityChange,
            "on_model_availability_changed",
            model_id=model_id,
            old_availability=old_availability,
            new_availability=new_availability,
            reason=reason,
        )

    async def on_batch_status_update(self, statuses: list[Mapping[str, Any]]) -> Accepted:
        """Several models' status at once (`batch_model_status_update`); each item holds a
        `ModelStatusSummary`'s fields."""
        items = [
            _build(
                models.ModelStatusSummary,
                _mapping(s, models.ModelStatusSummary, f"statuses[{i}]", {}),
                f"statuses[{i}]",
            )
            for i, s in enumerate(statuses)
        ]
        return await self._publish(
            models.BatchModelStatusUpdate, "on_batch_status_update", models=items, count=len(items)
        )

    async def on_model_lifecycle_event(self, model_id: str, event: str, reason: str | None = None) -> Accepted:
        """Loading or unloading (`model_lifecycle`: loading, loaded, unloading, unloaded, failed)."""
        return await self._publish(
            models.ModelLifecycle, "on_model_lifecycle_event", model_id=model_id, event=event, reason=reason
        )

    async def on_cleanup_recommendation(
        self, recommended_cleanup: list[str], potential_space_saved_mb: float, cleanup_priority: str = "medium"
    ) -> Accepted:
        """Models worth removing (`cleanup_recommendation`)."""
        return await self._publish(
            models.CleanupRecommendation,
            "on_cleanup_recommendation",
            recommended_cleanup=recommended_cleanup,
            potential_space_saved_mb=potential_space_saved_mb,
            cleanup_priority=cleanup_priority,
        )

    async def on_priority_recommendation(self, model_id: str, recommended_priority: str, reason: str) -> Accepted:
        """A model's download or load priority should change (`priority_recommendation`)."""
        return await self._publish(
            models.PriorityRecommendation,
            "on_priority_recommendation",
            model_id=model_id,
            recommended_priority=recommended_priority,
            reason=reason,
        )

    async def on_usage_statistics(self, usage_data: Mapping[str, Any]) -> Accepted:
        """Usage analytics (`usage_statistics_update`); `usage_data` holds its fields."""
        return await self._publish_mapped(
            models.UsageStatisticsUpdate, "on_usage_statistics", usage_data, "usage_data", {}
        )


class FallbackNotifier(_Notifier):
    """`fallback_notifications`: strategies, alternative models, queue positions."""

    async def on_fallback_strategy_activated(self, original_model: str, strategy: Mapping[str, Any]) -> Accepted:
        """A fallback strategy is in effect (`fallback_strategy`); `strategy` holds its fields
        (`strategy_type`, `recommended_action`, `user_message`, `alternative_model`,
        `estimated_wait_time`, `user_interaction_required`)."""
        d = _mapping(strategy, models.FallbackStrategy, "strategy", {"original_model": original_model})
        d.setdefault("user_interaction_required", False)
        return await self._publish(models.FallbackStrategy, "on_fallback_strategy_activated", **d)

    async def on_alternative_model_suggested(self, original_model: str, suggestion: Mapping[str, Any]) -> Accepted:
        """Another model is suggested (`alternative_model_suggestion`); `suggestion` holds
        `suggested_model`, `compatibility_score`, `performance_difference` and `reason`."""
        return await self._publish_mapped(
            models.AlternativeModelSuggestion,
            "on_alternative_model_suggested",
            suggestion,
            "suggestion",
            {"original_model": original_model},
        )

    async def on_queue_position_updated(
        self, model_id: str, queue_position: int, estimated_wait_time: float
    ) -> Accepted:
        """A request's place in the queue for a model (`model_queue_update`)."""
        return await self._publish(
            models.ModelQueueUpdate,
            "on_queue_position_updated",
            model_id=model_id,
            queue_position=queue_position,
            estimated_wait_time=estimated_wait_time,
        )


class SystemNotifier(_Notifier):
    """The core topics: `system_stats`, `generation_progress`, `queue_updates`, `alerts`."""

    async def on_system_stats(self, stats: Mapping[str, Any]) -> Accepted:
        """System figures (`system_stats`); `stats` holds its fields."""
        return await self._publish_mapped(models.SystemStats, "on_system_stats", stats, "stats", {})

    async def on_generation_progress(self, task_id: str, progress_data: Mapping[str, Any]) -> Accepted:
        """A generation task's progress (`generation_progress`)."""
        return await self._publish_mapped(
            models.GenerationProgress, "on_generation_progress", progress_data, "progress_data", {"task_id": task_id}
        )

    async def on_queue_update(self, queue_data: Mapping[str, Any]) -> Accepted:
        """The generation queue (`queue_update`)."""
        return await self._publish_mapped(models.QueueUpdate, "on_queue_update", queue_data, "queue_data", {})

    async def on_alert(self, alert_id: str, level: str, title: str, message: str, **fields: Any) -> Accepted:
        """An alert for people (`alert`); other `Alert` fields (e.g. `model_id`) as keywords."""
        d = _mapping(
            fields, models.Alert, "alert", {"alert_id": alert_id, "level": level, "title": title, "message": message}
        )
        return await self._publish(models.Alert, "on_alert", **d)
