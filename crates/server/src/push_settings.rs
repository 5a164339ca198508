//! Push's settings, read and checked (`MODELCAST_VAPID_*`, `MODELCAST_FCM_*`,
//! `MODELCAST_APNS_*`, `MODELCAST_PUSH_*`, `MODELCAST_DATA_DIR`): for start-up and for
//! `--check-config`. A leaf: it reads the configuration and files, nothing else.

use std::path::PathBuf;

use modelcast_push::{Apns, FcmAccount, PushConfig, Vapid, When};

use crate::config::Config;

/// Reads `path` for `setting`.
fn read(setting: &str, path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))
}

/// The push settings, read and checked: `None` when push is off (no keys given).
pub(crate) fn settings(config: &Config) -> Result<Option<PushConfig>, String> {
    let mut push = PushConfig::new(config.push_types.clone());
    push.when = if config.push_when == "always" { When::Always } else { When::Offline };
    push.per_user_per_minute = u32::try_from(config.push_rate).unwrap_or(u32::MAX);
    push.max_devices = config.push_max_devices;
    push.ttl = config.push_ttl;
    push.insecure_endpoints = config.push_insecure_endpoints;
    if let Some(path) = &config.vapid_private_key {
        let pem = read("MODELCAST_VAPID_PRIVATE_KEY", path)?;
        let subject = config.vapid_subject.as_deref().ok_or(
            "MODELCAST_VAPID_SUBJECT is needed with MODELCAST_VAPID_PRIVATE_KEY: a mailto: or https: contact for the push services",
        )?;
        let vapid = Vapid::from_pem(&pem, subject).map_err(|e| {
            format!(
                "MODELCAST_VAPID_PRIVATE_KEY: {}: {e}; make one with `modelcast push-keys > vapid.pem`",
                path.display()
            )
        })?;
        push.vapid = Some(vapid);
    }
    push.fcm = fcm(config)?;
    if let Some(path) = &config.apns_key {
        let p8 = read("MODELCAST_APNS_KEY", path)?;
        let need = |value: &Option<String>, name: &str| {
            value.clone().ok_or(format!("{name} is needed with MODELCAST_APNS_KEY"))
        };
        let apns = Apns::new(
            &p8,
            &need(&config.apns_key_id, "MODELCAST_APNS_KEY_ID")?,
            &need(&config.apns_team_id, "MODELCAST_APNS_TEAM_ID")?,
            &need(&config.apns_topic, "MODELCAST_APNS_TOPIC")?,
            &config.apns_url,
        )
        .map_err(|e| format!("MODELCAST_APNS_KEY: {}: {e}", path.display()))?;
        push.apns = Some(apns);
    }
    if let Some(path) = &config.push_ca {
        push.extra_ca = Some(read("MODELCAST_PUSH_CA", path)?.into_bytes());
    }
    if push.vapid.is_none() && push.fcm.is_none() && push.apns.is_none() {
        return Ok(None);
    }
    if config.jwt_secret.is_none() && config.jwt_public_key.is_none() {
        return Err(
            "push is for users: it needs MODELCAST_JWT_SECRET or MODELCAST_JWT_PUBLIC_KEY \
                    (a device is registered with its user's token)"
                .to_owned(),
        );
    }
    Ok(Some(push))
}

/// Where a single node keeps its registrations.
pub(crate) fn data_dir(config: &Config) -> PathBuf {
    if let Some(dir) = &config.data_dir {
        return dir.clone();
    }
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("STATE_DIRECTORY")
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("modelcast")))
        .or_else(|| env("HOME").map(|d| d.join(".local/state/modelcast")))
        .unwrap_or_else(|| PathBuf::from("modelcast-data"))
}

/// FCM's service account and API base, when `MODELCAST_FCM_SERVICE_ACCOUNT` is given.
fn fcm(config: &Config) -> Result<Option<(FcmAccount, String)>, String> {
    let Some(path) = &config.fcm_service_account else { return Ok(None) };
    let text = read("MODELCAST_FCM_SERVICE_ACCOUNT", path)?;
    let account: FcmAccount = serde_json::from_str(&text).map_err(|e| {
        format!(
            "MODELCAST_FCM_SERVICE_ACCOUNT: {} is not a service account's JSON key: {e}",
            path.display()
        )
    })?;
    jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|e| {
        format!("MODELCAST_FCM_SERVICE_ACCOUNT: {}: private_key: {e}", path.display())
    })?;
    Ok(Some((account, config.fcm_url.clone())))
}
