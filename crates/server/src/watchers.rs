//! Counts each model's watchers for the [`Demand`] tracker every [`TICK`]: the subscriptions
//! whose filter names it, on every node (the roster), and the users whose audience-scoped
//! downloads or generation tasks of it are in progress (the hub's retained state).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modelcast_protocol::Topic;

use crate::demand::{Demand, model_in_progress, model_of};
use crate::roster::Entry;
use crate::state::App;

/// How often the watchers are counted.
const TICK: Duration = Duration::from_secs(1);

/// Counts the demand every [`TICK`] while the server lives.
pub(crate) fn follow(app: &Arc<App>) {
    let app = Arc::downgrade(app);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TICK).await;
            let Some(app) = app.upgrade() else { return };
            let Some(counts) = count(&app).await else { continue };
            let leader = lead(&app).await;
            Demand::observe(&app.demand, counts, Instant::now(), leader);
        }
    });
}

/// Whether this node sends the webhook's calls: always alone; on a cluster, the holder of the
/// `demand` lease in Redis.
async fn lead(app: &App) -> bool {
    let Some(kv) = app.roster.clustered() else { return true };
    let lease = app.config.presence_lease;
    kv.lead("demand", u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)).await.unwrap_or(false)
}

/// Per model the backend announced: subscriptions whose filter names it (every node), users
/// with its downloads or tasks in progress. `None` when another node's share could not be
/// read. A filter may name any string; only models the hub holds state for (`model_status`,
/// `download_progress`: published by the backend, bounded by `MODELCAST_STATE_MAX_KEYS`) are
/// counted, so what the tracker keeps is bounded by the catalog, never by what clients send.
async fn count(app: &App) -> Option<HashMap<String, (usize, usize)>> {
    let known = known_models(app);
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    let mut tally = |entry: &Entry| {
        let mut named = HashSet::new();
        for subscription in &entry.topics {
            named.extend(subscription.filter.iter().flat_map(|f| f.model_ids.iter()));
        }
        for model in named.into_iter().filter(|m| known.contains(*m)) {
            counts.entry(model.clone()).or_default().0 += 1;
        }
    };
    app.roster.each_entry(&|_| true, &mut tally).await.ok()?;
    for (model, users) in in_progress(app) {
        counts.entry(model).or_default().1 += users;
    }
    Some(counts)
}

/// The models the hub holds state for: `model_status` and `download_progress`, any audience.
fn known_models(app: &App) -> HashSet<String> {
    let mut known = HashSet::new();
    for topic in [Topic::ModelStatus, Topic::DownloadProgress] {
        each_state_frame(app, topic, &mut |frame, _| {
            if let Some(model) = model_of(frame) {
                known.insert(model);
            }
        });
    }
    known
}

/// Calls `each` with every frame of `topic`'s retained state and its audience.
fn each_state_frame(
    app: &App,
    topic: Topic,
    each: &mut impl FnMut(&[u8], Option<&modelcast_hub::Audience>),
) {
    let mut after = None;
    loop {
        let page = app.hub.state_page(topic, after, 1_000, None);
        for (frame, audience) in page.frames.iter().zip(&page.audiences) {
            each(frame.as_bytes(), audience.as_ref());
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return,
        }
    }
}

/// Per model, the distinct users whose audience-scoped downloads or generation tasks of it are
/// in progress (by the retained state).
fn in_progress(app: &App) -> HashMap<String, usize> {
    let mut users: HashMap<String, HashSet<String>> = HashMap::new();
    for topic in [Topic::DownloadProgress, Topic::GenerationProgress] {
        each_state_frame(app, topic, &mut |frame, audience| {
            let Some(audience) = audience.filter(|a| !a.user_names().is_empty()) else { return };
            if let Some(model) = model_in_progress(frame) {
                let names = audience.user_names().iter().map(|u| u.to_string());
                users.entry(model).or_default().extend(names);
            }
        });
    }
    users.into_iter().map(|(model, users)| (model, users.len())).collect()
}
