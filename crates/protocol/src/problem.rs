//! [`Problem`]: one thing wrong with a published message. A leaf module: the checks of `data`
//! (`check.rs`) and of `audience` (`audience.rs`) both report in it.

/// One problem in a published message: where (`data.progress_percent`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's path from the frame (`data.status`, `data.models[2].model_id`).
    pub path: String,
    /// What is wrong, for people.
    pub message: String,
}
