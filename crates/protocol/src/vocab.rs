//! Closed vocabularies (status values, severities, codes) that stay open to the future.
//!
//! Each is an enum of the values this version knows plus `Other(String)`: a reader built
//! today accepts a value a newer server sends, keeps it verbatim and writes it back unchanged.
//! The schema says the same: one of the known values, or any other string.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Joins doc-comment lines into one description, trimming the leading space rustdoc keeps.
fn join_doc(lines: &[&str]) -> String {
    lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ").trim().to_owned()
}

macro_rules! open_enum {
    (
        $(#[doc = $doc:literal])*
        $name:ident {
            $( $(#[doc = $vdoc:literal])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[doc = $doc])*
        ///
        /// Unknown values are kept as [`Self::Other`] so that newer servers never break a reader.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[doc = $vdoc])* $variant, )+
            /// A value this version does not know; kept verbatim so it round-trips.
            Other(String),
        }

        impl $name {
            /// The values this version knows, as they appear on the wire.
            pub const KNOWN: &'static [&'static str] = &[$($wire),+];

            /// The value as it appears on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $wire, )+
                    Self::Other(s) => s,
                }
            }

            /// Whether this is a value this version knows.
            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Other(_))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( $wire => Self::$variant, )+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self::from(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <Cow<'de, str>>::deserialize(deserializer)?;
                Ok(Self::from(s.as_ref()))
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let known = vec![
                    $( json_schema!({
                        "const": $wire,
                        "description": join_doc(&[$($vdoc),*]),
                    }), )+
                ];
                let mut any_of: Vec<serde_json::Value> =
                    known.into_iter().map(serde_json::Value::from).collect();
                any_of.push(serde_json::json!({
                    "type": "string",
                    "description": "A value added by a newer protocol version; treat it as unknown.",
                }));
                json_schema!({
                    "description": join_doc(&[$($doc),*]),
                    "anyOf": any_of,
                })
            }
        }
    };
}

open_enum! {
    /// Whether a model can be used right now.
    AvailabilityStatus {
        /// Downloaded, verified and ready to load.
        Available = "available",
        /// Not present locally.
        Missing = "missing",
        /// Being downloaded.
        Downloading = "downloading",
        /// Present but partially downloaded.
        Partial = "partial",
        /// Present but failed an integrity check.
        Corrupted = "corrupted",
        /// A newer version is being installed.
        Updating = "updating",
        /// Loaded in memory and serving.
        Loaded = "loaded",
        /// Present but unusable for another reason.
        Unavailable = "unavailable",
        /// Not known yet (e.g. before the first scan).
        Unknown = "unknown",
    }
}

open_enum! {
    /// The state of a model download.
    DownloadStatus {
        /// Waiting for a download slot.
        Queued = "queued",
        /// Transferring data.
        Downloading = "downloading",
        /// Paused by the user or the system; can be resumed.
        Paused = "paused",
        /// Checking the downloaded files.
        Verifying = "verifying",
        /// Finished and verified.
        Completed = "completed",
        /// Stopped with an error (see the accompanying message).
        Failed = "failed",
        /// Cancelled by the user.
        Cancelled = "cancelled",
        /// Waiting before the next retry attempt.
        Retrying = "retrying",
        /// The download's source stopped reporting; the shown progress may be outdated.
        Stale = "stale",
    }
}

open_enum! {
    /// A download lifecycle event, carried by `download_status_change`.
    DownloadEvent {
        /// A download began.
        Started = "started",
        /// A download was paused.
        Paused = "paused",
        /// A paused download continued.
        Resumed = "resumed",
        /// A download was cancelled.
        Cancelled = "cancelled",
        /// A download finished successfully.
        Completed = "completed",
        /// A download failed for good.
        Failed = "failed",
        /// A failed attempt will be retried.
        Retrying = "retrying",
        /// The download's source stopped reporting.
        Stale = "stale",
    }
}

open_enum! {
    /// The outcome of a model health check.
    HealthStatus {
        /// All checks passed.
        Healthy = "healthy",
        /// Usable, but some checks raised warnings.
        Degraded = "degraded",
        /// Files are damaged; the model should not be used.
        Corrupted = "corrupted",
        /// Files are missing.
        Missing = "missing",
        /// Being repaired.
        Repairing = "repairing",
        /// The check could not run.
        Unknown = "unknown",
    }
}

open_enum! {
    /// How serious a detected problem is.
    Severity {
        /// Cosmetic or informational.
        Low = "low",
        /// Should be fixed soon.
        Medium = "medium",
        /// Impairs use of the model.
        High = "high",
        /// The model is unusable.
        Critical = "critical",
    }
}

open_enum! {
    /// The kind of corruption a health check found.
    CorruptionType {
        /// A file's checksum does not match the expected value.
        ChecksumMismatch = "checksum_mismatch",
        /// Expected files are absent.
        MissingFiles = "missing_files",
        /// A download did not finish writing all files.
        IncompleteDownload = "incomplete_download",
        /// A file is not in the expected format.
        InvalidFormat = "invalid_format",
        /// A file's size differs from the expected size.
        SizeMismatch = "size_mismatch",
        /// A file cannot be read.
        PermissionDenied = "permission_denied",
    }
}

open_enum! {
    /// A fallback strategy chosen when a requested model cannot be used.
    StrategyType {
        /// Use another, compatible model.
        AlternativeModel = "alternative_model",
        /// Wait in a queue until the model is ready.
        QueueAndWait = "queue_and_wait",
        /// Download the model, then retry.
        DownloadAndRetry = "download_and_retry",
        /// Lower the request's requirements (resolution, steps) to fit.
        ReduceRequirements = "reduce_requirements",
        /// Produce a placeholder result.
        MockGeneration = "mock_generation",
        /// No automatic fallback is possible.
        NoFallback = "none",
    }
}

open_enum! {
    /// How urgent a cleanup or priority recommendation is.
    Priority {
        /// Whenever convenient.
        Low = "low",
        /// Soon.
        Medium = "medium",
        /// Now.
        High = "high",
        /// Required for the system to keep working.
        Critical = "critical",
    }
}

open_enum! {
    /// The level of an alert or of a health notification.
    AlertLevel {
        /// For information.
        Info = "info",
        /// Something may need attention.
        Warning = "warning",
        /// Something failed.
        Error = "error",
        /// Something failed and needs attention now.
        Critical = "critical",
    }
}

open_enum! {
    /// A model lifecycle event: loading into and unloading from memory.
    LifecycleEvent {
        /// Loading has begun.
        Loading = "loading",
        /// Loaded and ready to serve.
        Loaded = "loaded",
        /// Unloading has begun.
        Unloading = "unloading",
        /// Removed from memory.
        Unloaded = "unloaded",
        /// Loading or unloading failed.
        Failed = "failed",
    }
}

open_enum! {
    /// The phase of an automatic model repair.
    RepairPhase {
        /// The repair began.
        Started = "started",
        /// The repair finished and the model is healthy again.
        Completed = "completed",
        /// The repair did not fix the model.
        Failed = "failed",
    }
}

open_enum! {
    /// The state of a generation task.
    GenerationStatus {
        /// Waiting in the queue.
        Queued = "queued",
        /// Being generated.
        Running = "running",
        /// Finished successfully.
        Completed = "completed",
        /// Stopped with an error.
        Failed = "failed",
        /// Cancelled by the user.
        Cancelled = "cancelled",
    }
}

open_enum! {
    /// A machine-readable error code in an `error` message.
    ErrorCode {
        /// The frame was not valid JSON.
        InvalidJson = "invalid_json",
        /// The JSON was valid but not a known message: a field is missing or has the wrong type.
        InvalidMessage = "invalid_message",
        /// The `action` is not one the server knows.
        UnknownAction = "unknown_action",
        /// The `topic` is not one of the server's topics.
        UnknownTopic = "unknown_topic",
        /// A binary frame was sent; the protocol uses text frames only.
        BinaryNotSupported = "binary_not_supported",
        /// The frame is larger than the server accepts.
        FrameTooLarge = "frame_too_large",
        /// The connection is not subscribed to that topic.
        NotSubscribed = "not_subscribed",
        /// Authentication is required or the token is invalid.
        Unauthorized = "unauthorized",
        /// The identity may not use that topic.
        Forbidden = "forbidden",
        /// Too many messages in too short a time.
        RateLimited = "rate_limited",
        /// The connection has as many subscriptions as the server allows.
        TooManySubscriptions = "too_many_subscriptions",
        /// The server failed; the request may be retried.
        Internal = "internal",
        /// The cluster's message store (Redis) cannot be reached now, or this node has not
        /// caught up with the position asked for: retry the request in a moment.
        Unavailable = "unavailable",
        /// An operator ended this connection or revoked its user's tokens: the stream ends
        /// after this error. Do not reconnect with the same token; a new one may connect.
        Revoked = "revoked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_map_to_variants_and_unknown_ones_survive() {
        let known: DownloadStatus = serde_json::from_str("\"paused\"").unwrap();
        assert_eq!(known, DownloadStatus::Paused);
        let future: DownloadStatus = serde_json::from_str("\"throttled\"").unwrap();
        assert_eq!(future, DownloadStatus::Other("throttled".into()));
        assert!(!future.is_known());
        assert_eq!(serde_json::to_string(&future).unwrap(), "\"throttled\"");
        assert!(serde_json::from_str::<DownloadStatus>("3").is_err());
    }
}
