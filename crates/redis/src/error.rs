//! The crate's error type: what can stop the engine from starting.

/// Why the Redis engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be reached (or refused the connection) at start-up.
    #[error("cannot reach Redis at {url}: {source}")]
    Connect {
        /// The URL, its password hidden.
        url: String,
        /// What redis-rs said.
        source: redis::RedisError,
    },
}

/// The crate's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
