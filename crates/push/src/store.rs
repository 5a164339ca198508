//! Where registrations live: the [`Store`] seam — on one node a JSON file under
//! `MODELCAST_DATA_DIR` ([`FileStore`], written atomically on every change), on a cluster Redis
//! (implemented where Redis is, by the server) — plus the cluster's claim that makes one push
//! per message per device, and presence (whether a user has a connection open anywhere).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use futures_util::future::BoxFuture;

use crate::device::Device;

/// Every user's devices.
pub type Registry = BTreeMap<String, Vec<Device>>;

/// A store of registrations. Every method is one round trip (or a file write).
pub trait Store: Send + Sync + 'static {
    /// Adds or replaces `device` of `user`, unless the user has `max` devices already (then
    /// `Ok(false)`).
    fn put(&self, user: &str, device: Device, max: usize) -> BoxFuture<'_, Result<bool, String>>;
    /// Removes `user`'s device `id`; whether it was there.
    fn remove(&self, user: &str, id: &str) -> BoxFuture<'_, Result<bool, String>>;
    /// Every user's devices (read when the push worker refreshes its copy).
    fn all(&self) -> BoxFuture<'_, Result<Registry, String>>;
    /// Claims the push of message `id` for this node: `true` for exactly one node of a cluster
    /// (on one node, always).
    fn claim(&self, id: &str) -> BoxFuture<'_, Result<bool, String>>;
}

/// Whether users have a WebSocket or an event stream open (on any node of a cluster).
pub trait Presence: Send + Sync + 'static {
    /// For each of `users`, whether it is connected now (in order; one round trip to a shared
    /// store for all of them, not one per user).
    fn online<'a>(&'a self, users: &'a [&'a str]) -> BoxFuture<'a, Vec<bool>>;
}

/// Registrations in one JSON file (`registrations.json` under a directory), read at start,
/// rewritten on every change (written to a temporary file, then renamed over it).
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    registry: Mutex<Registry>,
}

impl FileStore {
    /// The store in `dir` (created if missing), loaded from its file if there is one.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, String> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join("registrations.json");
        let registry = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not a registrations file: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Self { path, registry: Mutex::new(registry) })
    }

    fn save(&self, registry: &Registry) -> Result<(), String> {
        let temp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(registry).map_err(|e| e.to_string())?;
        std::fs::write(&temp, bytes)
            .and_then(|()| std::fs::rename(&temp, &self.path))
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }

    fn change<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> Result<T, String> {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = registry.clone();
        let out = f(&mut next);
        self.save(&next)?;
        *registry = next;
        Ok(out)
    }
}

impl Store for FileStore {
    fn put(&self, user: &str, device: Device, max: usize) -> BoxFuture<'_, Result<bool, String>> {
        let user = user.to_owned();
        Box::pin(async move {
            self.change(|registry| {
                let devices = registry.entry(user).or_default();
                match devices.iter().position(|d| d.id == device.id) {
                    Some(i) => devices[i] = device,
                    None if devices.len() >= max => return false,
                    None => devices.push(device),
                }
                true
            })
        })
    }

    fn remove(&self, user: &str, id: &str) -> BoxFuture<'_, Result<bool, String>> {
        let (user, id) = (user.to_owned(), id.to_owned());
        Box::pin(async move {
            self.change(|registry| {
                let Some(devices) = registry.get_mut(&user) else { return false };
                let before = devices.len();
                devices.retain(|d| d.id != id);
                let removed = devices.len() < before;
                if devices.is_empty() {
                    registry.remove(&user);
                }
                removed
            })
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<Registry, String>> {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move { Ok(registry) })
    }

    fn claim(&self, _id: &str) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async { Ok(true) })
    }
}
