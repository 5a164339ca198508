"""Every notifier method ends up as the seed's frame on a WebSocket subscriber (validated
against schemas/ by the collector fixture)."""

from __future__ import annotations

from typing import Any

import pytest

from modelcast import MappingError, get_model_notification_integrator
from modelcast.integrator import ModelNotificationIntegrator


@pytest.fixture
async def integrator(server, monkeypatch) -> ModelNotificationIntegrator:
    # Configured from the environment, as the seed's backend would be: the ws:// form works too.
    monkeypatch.setenv("MODELCAST_URL", server.ws)
    monkeypatch.delenv("MODELCAST_API_KEY", raising=False)
    integrator = get_model_notification_integrator()
    yield integrator
    await integrator.aclose()
    from modelcast import integrator as module

    module._instances.clear()


def about(model_id: str, type_name: str):
    return lambda f: f["type"] == type_name and f["data"].get("model_id") == model_id


async def test_download_notifier_covers_the_lifecycle(integrator, collector) -> None:
    d = integrator.get_download_notifier()
    await d.on_download_started("dl-1", total_mb=1000)
    started = await collector.wait_for(about("dl-1", "download_status_change"))
    assert (started["topic"], started["data"]["event"], started["data"]["new_status"]) == (
        "download_progress",
        "started",
        "downloading",
    )

    await d.on_download_progress("dl-1", {"downloaded_mb": 455.0, "speed_mbps": 15.2})
    progress = await collector.wait_for(about("dl-1", "download_progress_update"))
    data = progress["data"]
    assert data["progress_percent"] == 45.5 and data["total_mb"] == 1000 and data["eta_seconds"] == 35.9
    assert (data["can_pause"], data["can_resume"], data["can_cancel"]) == (True, False, True)

    await d.on_download_paused("dl-1", "user")
    await d.on_download_resumed("dl-1")
    await d.on_download_retry("dl-1", 1, 3, "connection reset", 2.0)
    await d.on_download_failed("dl-1", "disk full")
    retry = await collector.wait_for(about("dl-1", "download_retry"))
    assert (retry["data"]["retry_count"], retry["data"]["max_retries"]) == (1, 3)
    await collector.wait_for(lambda f: about("dl-1", "download_status_change")(f) and f["data"]["event"] == "failed")
    events = [f["data"]["event"] for f in collector.of_type("download_status_change")]
    assert events == ["started", "paused", "resumed", "retrying", "failed"]
    olds = [f["data"]["old_status"] for f in collector.of_type("download_status_change")]
    assert olds == ["queued", "downloading", "paused", "downloading", "retrying"]

    await d.on_download_started("dl-2", total_mb=10)
    await d.on_download_cancelled("dl-2", "no longer needed")
    await d.on_download_started("dl-3", total_mb=10)
    await d.on_download_completed("dl-3")
    await collector.wait_for(lambda f: about("dl-2", "download_status_change")(f) and f["data"]["event"] == "cancelled")
    await collector.wait_for(
        lambda f: about("dl-3", "download_status_change")(f) and f["data"]["new_status"] == "completed"
    )


async def test_health_notifier(integrator, collector) -> None:
    h = integrator.get_health_notifier()
    await h.on_corruption_detected("hm-1", "checksum_mismatch", "high")
    frame = await collector.wait_for(about("hm-1", "corruption_detection"))
    assert frame["topic"] == "health_monitoring"
    assert (frame["data"]["corruption_type"], frame["data"]["severity"]) == ("checksum_mismatch", "high")

    await h.on_health_check_completed(
        "hm-1", {"health_status": "degraded", "integrity_score": 0.8, "file_count": 3, "total_size_mb": 100}
    )
    check = await collector.wait_for(about("hm-1", "health_monitoring_alert"))
    assert check["data"]["is_healthy"] is False
    await h.on_performance_degradation("hm-1", "generation_time_seconds", 10.0, 16.0)
    slow = await collector.wait_for(about("hm-1", "performance_degradation"))
    assert (slow["data"]["degradation_percent"], slow["data"]["severity"]) == (60.0, "high")
    await h.on_repair_started("hm-1", "re-download")
    await h.on_repair_completed("hm-1", "re-download", success=False, message="mirror down")
    await collector.wait_for(lambda f: about("hm-1", "model_repair")(f) and f["data"]["phase"] == "failed")


async def test_availability_notifier(integrator, collector) -> None:
    a = integrator.get_availability_notifier()
    status = {
        "availability_status": "available",
        "is_available": True,
        "is_loaded": False,
        "size_mb": 1000,
        "integrity_score": 1.0,
        "performance_score": 0.9,
        "usage_frequency": 0.5,
        "update_available": False,
    }
    await a.on_model_status_update("av-1", status)

    def status_of(model_id: str):
        def check(f: dict[str, Any]) -> bool:
            if f["type"] == "model_status_update":
                return f["data"]["model_id"] == model_id
            return f["type"] == "batch_model_status_update" and any(
                m["model_id"] == model_id for m in f["data"]["models"]
            )

        return check

    await collector.wait_for(status_of("av-1"))
    await a.on_model_availability_changed("av-1", "available", "corrupted", "checksum mismatch")
    change = await collector.wait_for(about("av-1", "model_availability_change"))
    assert change["data"]["new_availability"] == "corrupted"
    await a.on_model_lifecycle_event("av-1", "loading")
    await collector.wait_for(about("av-1", "model_lifecycle"))
    summary = {k: status[k] for k in ("availability_status", "is_available", "is_loaded")}
    await a.on_batch_status_update([{"model_id": "av-2", **summary}, {"model_id": "av-3", **summary}])
    await collector.wait_for(status_of("av-3"))
    await a.on_cleanup_recommendation(["av-9"], 2048.0, "low")
    await a.on_priority_recommendation("av-1", "high", "used daily")
    await a.on_usage_statistics({"total_models": 4, "active_models": 2, "usage_trends": {"daily_usage": 3}})
    for type_name in ("cleanup_recommendation", "priority_recommendation", "usage_statistics_update"):
        frame = await collector.wait_for(lambda f, t=type_name: f["type"] == t)
        assert frame["topic"] == "analytics_updates"


async def test_fallback_and_system_notifiers(integrator, collector) -> None:
    f = integrator.get_fallback_notifier()
    suggestion = {
        "suggested_model": "i2v-a14b",
        "compatibility_score": 0.85,
        "performance_difference": -0.1,
        "reason": "same family",
    }
    await f.on_alternative_model_suggested("fb-1", suggestion)
    frame = await collector.wait_for(lambda x: x["type"] == "alternative_model_suggestion")
    assert (frame["topic"], frame["data"]["original_model"], frame["data"]["suggested_model"]) == (
        "fallback_notifications",
        "fb-1",
        "i2v-a14b",
    )
    await f.on_fallback_strategy_activated(
        "fb-1", {"strategy_type": "queue_and_wait", "recommended_action": "wait", "user_message": "queued"}
    )
    await f.on_queue_position_updated("fb-1", 3, 120.0)
    await collector.wait_for(lambda x: x["type"] == "fallback_strategy")
    await collector.wait_for(about("fb-1", "model_queue_update"))

    s = integrator.get_system_notifier()
    await s.on_alert("al-1", "warning", "Disk", "90% full")
    await s.on_system_stats({"cpu_percent": 10, "memory_percent": 20, "memory_used_mb": 1, "memory_total_mb": 2})
    await s.on_generation_progress("task-1", {"model_id": "m", "status": "running", "progress_percent": 5})
    await s.on_queue_update({"queue_length": 0, "active_tasks": 0, "items": []})
    for type_name in ("alert", "system_stats", "generation_progress", "queue_update"):
        await collector.wait_for(lambda x, t=type_name: x["type"] == t)


async def test_what_cannot_be_mapped_is_refused_before_sending(integrator, collector) -> None:
    d = integrator.get_download_notifier()
    with pytest.raises(MappingError, match="'percent' is not a field of DownloadProgressUpdate"):
        await d.on_download_progress("bad-1", {"percent": 10, "total_mb": 100})
    with pytest.raises(MappingError, match="total_mb"):
        await d.on_download_progress("bad-2", {"progress_percent": 10})
    with pytest.raises(MappingError, match="suggested_model"):
        await integrator.get_fallback_notifier().on_alternative_model_suggested("x", {"reason": "r"})
    await integrator.get_system_notifier().on_alert("after", "info", "t", "m")
    await collector.wait_for(lambda f: f["type"] == "alert")
    assert [f["type"] for f in collector.frames] == ["alert"], "nothing was sent for the refused calls"


async def test_components_are_hooked_through_their_callback(integrator, collector) -> None:
    class Downloader:
        def add_notification_callback(self, callback) -> None:
            self.notify = callback

    downloader = Downloader()
    await integrator.setup_component_integrations(enhanced_downloader=downloader)
    await downloader.notify("download_started", "cb-1", total_mb=50)
    await downloader.notify("download_progress", "cb-1", {"progress_percent": 10.0})
    await collector.wait_for(about("cb-1", "download_progress_update"))
    with pytest.raises(MappingError, match="no event 'download_exploded'"):
        await downloader.notify("download_exploded", "cb-1")
    with pytest.raises(TypeError, match="add_notification_callback"):
        await integrator.setup_component_integrations(health_monitor=object())


async def test_mapping_errors_name_every_field_at_once(integrator, collector) -> None:
    d = integrator.get_download_notifier()
    # A value of the wrong type is named, not a bare TypeError from deriving with it.
    with pytest.raises(MappingError, match=r"progress_percent: .*got '45%'"):
        await d.on_download_progress("m1", {"progress_percent": "45%", "total_mb": 100})
    # Sizes that contradict each other name the fields they came from.
    with pytest.raises(MappingError, match=r"downloaded_mb \(2000\) is more than total_mb \(1000\)"):
        await d.on_download_progress("m1", {"downloaded_mb": 2000, "total_mb": 1000})
    # Missing fields and a value outside the vocabulary, together.
    a = integrator.get_availability_notifier()
    with pytest.raises(MappingError) as caught:
        await a.on_model_status_update("m1", {"availability_status": "ready", "size_mb": 10})
    text = str(caught.value)
    assert "availability_status: 'ready' is not a known value" in text, text
    for missing in ("is_available", "is_loaded", "integrity_score", "performance_score", "update_available"):
        assert missing in text, f"{missing} in {text}"
    await integrator.get_system_notifier().on_alert("after", "info", "t", "m")
    await collector.wait_for(lambda f: f["type"] == "alert")
    assert [f["type"] for f in collector.frames] == ["alert"], "nothing was sent for the refused calls"


async def test_numbers_given_as_strings_are_published_as_numbers_and_derived_from(integrator, collector) -> None:
    # The seed's callers pass what their components hold: "45.5" as a percent, "1000" as a size.
    # What is derived (sizes, ETA) is computed on the numbers, never a bare TypeError.
    d = integrator.get_download_notifier()
    await d.on_download_started("m2", total_mb="1000")
    await d.on_download_progress("m2", {"progress_percent": "45.5", "speed_mbps": "10"})
    frame = await collector.wait_for(lambda f: f["type"] == "download_progress_update")
    data = frame["data"]
    assert (data["progress_percent"], data["total_mb"], data["downloaded_mb"]) == (45.5, 1000.0, 455.0), data
    assert data["eta_seconds"] == 54.5, data
    await d.on_download_progress("m3", {"downloaded_mb": "250", "total_mb": "1000"})
    frame = await collector.wait_for(
        lambda f: f["type"] == "download_progress_update" and f["data"]["model_id"] == "m3"
    )
    assert frame["data"]["progress_percent"] == 25.0


async def test_a_notifier_for_an_audience_publishes_to_it_only(integrator, collector) -> None:
    from modelcast import Audience

    alice = Audience(users=["alice"])
    d = integrator.get_download_notifier()
    assert d.to(alice) is d.to(Audience(users=("alice",))), "one notifier per audience, kept"
    await d.to(alice).on_download_started("private-1", total_mb=10)
    await d.on_download_started("public-1", total_mb=10)
    await collector.wait_for(about("public-1", "download_status_change"))
    # The collector has no token: alice's download never reaches it.
    seen = [f["data"]["model_id"] for f in collector.of_type("download_status_change")]
    assert seen == ["public-1"]
