//! Web Push's cryptography: message encryption (RFC 8291, `aes128gcm` of RFC 8188: ECDH on
//! P-256 with the browser's key, HKDF-SHA-256, AES-128-GCM, one record) and VAPID (RFC 8292:
//! an ES256 JWT for the push service's origin, and the server's public key). A leaf: pure
//! functions over bytes.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

/// The record size written in the header: one record holds the whole message.
const RECORD_SIZE: u32 = 4096;

/// The largest payload one record holds (RFC 8188: the record size less the tag and the
/// delimiter byte). Push services accept bodies up to 4,096 bytes; the header takes 86.
pub const MAX_PAYLOAD: usize = 4096 - 86 - 16 - 1;

/// What is wrong with a browser's subscription keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    /// `p256dh` is not base64url of an uncompressed P-256 point (65 bytes).
    #[error("keys.p256dh: expected base64url of an uncompressed P-256 public key (65 bytes)")]
    P256dh,
    /// `auth` is not base64url of 16 bytes.
    #[error("keys.auth: expected base64url of 16 bytes")]
    Auth,
    /// The payload is larger than one record.
    #[error("the payload is {0} bytes; one Web Push message holds at most {MAX_PAYLOAD}")]
    TooLarge(usize),
}

/// A browser's subscription keys, checked.
#[derive(Debug, Clone)]
pub(crate) struct UaKeys {
    public: PublicKey,
    auth: [u8; 16],
}

impl UaKeys {
    /// From the `PushSubscription`'s `keys.p256dh` and `keys.auth` (base64url, padding or
    /// not, as browsers give them).
    pub(crate) fn parse(p256dh: &str, auth: &str) -> Result<Self, KeyError> {
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
        let point = decode(p256dh).map_err(|_| KeyError::P256dh)?;
        if point.len() != 65 {
            return Err(KeyError::P256dh);
        }
        let public = PublicKey::from_sec1_bytes(&point).map_err(|_| KeyError::P256dh)?;
        let auth: [u8; 16] =
            decode(auth).ok().and_then(|a| a.try_into().ok()).ok_or(KeyError::Auth)?;
        Ok(Self { public, auth })
    }
}

/// A random P-256 secret key.
fn random_secret() -> SecretKey {
    loop {
        let bytes: [u8; 32] = rand::random();
        if let Ok(key) = SecretKey::from_slice(&bytes) {
            return key;
        }
    }
}

fn expand<const N: usize>(hkdf: &Hkdf<Sha256>, info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    hkdf.expand(info, &mut out).unwrap_or_else(|_| unreachable!("N is at most 32"));
    out
}

/// Encrypts `payload` for `ua` (RFC 8291): the body of the push request, with
/// `Content-Encoding: aes128gcm`. A new ephemeral key and salt each time.
pub(crate) fn encrypt(ua: &UaKeys, payload: &[u8]) -> Result<Vec<u8>, KeyError> {
    encrypt_with(ua, payload, &random_secret(), rand::random())
}

/// [`encrypt`] with a given ephemeral key and salt (for tests against known vectors).
fn encrypt_with(
    ua: &UaKeys,
    payload: &[u8],
    ephemeral: &SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, KeyError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(KeyError::TooLarge(payload.len()));
    }
    let as_public = ephemeral.public_key().to_encoded_point(false);
    let ua_public = ua.public.to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), ua.public.as_affine());
    // IKM from the ECDH secret and the browser's auth secret (RFC 8291 §3.3).
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public.as_bytes());
    key_info.extend_from_slice(as_public.as_bytes());
    let ikm: [u8; 32] =
        expand(&Hkdf::<Sha256>::new(Some(&ua.auth), shared.raw_secret_bytes()), &key_info);
    // The content key and nonce from the salt (RFC 8188 §2.2, §2.3).
    let prk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let cek: [u8; 16] = expand(&prk, b"Content-Encoding: aes128gcm\0");
    let nonce: [u8; 12] = expand(&prk, b"Content-Encoding: nonce\0");
    let mut plain = Vec::with_capacity(payload.len() + 1);
    plain.extend_from_slice(payload);
    plain.push(2); // the last record's delimiter
    let cipher = Aes128Gcm::new_from_slice(&cek).unwrap_or_else(|_| unreachable!("16 bytes"));
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), plain.as_slice())
        .unwrap_or_else(|_| unreachable!("AES-GCM encrypts any length below 64 GiB"));
    let mut body = Vec::with_capacity(86 + sealed.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// The server's VAPID key pair (RFC 8292).
#[derive(Clone)]
pub struct Vapid {
    signing: SigningKey,
    /// The public key as browsers want it (`applicationServerKey`): base64url, uncompressed.
    public: String,
    /// `mailto:` or `https:` contact for the push services.
    subject: String,
    /// The header made last per push service origin, and until when it is reused (a JWT is
    /// good for 12 hours; one is signed per origin per hour, not per push).
    made: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>>,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public", &self.public)
            .field("subject", &self.subject)
            .finish()
    }
}

impl Vapid {
    /// From a PEM P-256 private key (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`) and the
    /// contact `subject` (`mailto:…` or `https://…`).
    pub fn from_pem(pem: &str, subject: &str) -> Result<Self, String> {
        use p256::pkcs8::DecodePrivateKey as _;
        let secret = SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| SecretKey::from_sec1_pem(pem))
            .map_err(|_| "not a PEM EC P-256 private key (PKCS#8 or SEC1)".to_owned())?;
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
            return Err(format!("the subject `{subject}` must be a mailto: or https: URL"));
        }
        let public = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
        Ok(Self {
            signing: SigningKey::from(&secret),
            public,
            subject: subject.to_owned(),
            made: std::sync::Arc::default(),
        })
    }

    /// A new key pair as PEM (PKCS#8), for `modelcast push-keys`.
    pub fn generate_pem() -> String {
        use p256::pkcs8::EncodePrivateKey as _;
        random_secret()
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .map(|pem| pem.to_string())
            .unwrap_or_else(|_| unreachable!("a P-256 key always encodes"))
    }

    /// The public key browsers subscribe with (base64url of the uncompressed point).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header for a push to `origin` (`https://push.example.com`):
    /// `vapid t=<ES256 JWT>, k=<public key>`, the JWT valid for 12 hours and reused for one.
    pub fn authorization(&self, origin: &str, now_unix: u64) -> String {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((header, until)) = made.get(origin)
            && now_unix < *until
        {
            return header.clone();
        }
        let header = self.sign(origin, now_unix);
        if made.len() >= 1024 {
            made.clear(); // push services are few; a bound all the same
        }
        made.insert(origin.to_owned(), (header.clone(), now_unix + 3600));
        header
    }

    fn sign(&self, origin: &str, now_unix: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims =
            serde_json::json!({"aud": origin, "exp": now_unix + 12 * 3600, "sub": self.subject});
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature: Signature = self.signing.sign(signing_input.as_bytes());
        let jwt = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        format!("vapid t={jwt}, k={}", self.public)
    }
}

/// An ES256 JWT (`header` and `claims` as JSON) signed with `key`: APNs' provider token.
pub(crate) fn es256_jwt(
    key: &SigningKey,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8291 §5's example, byte for byte.
    #[test]
    fn the_rfc_8291_example_encrypts_to_its_published_body() {
        let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
        let ua = UaKeys::parse(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "BTBZMqHH6r4Tts7J_aSIgg",
        )
        .unwrap();
        let ephemeral =
            SecretKey::from_slice(&b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")).unwrap();
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let body =
            encrypt_with(&ua, b"When I grow up, I want to be a watermelon", &ephemeral, salt)
                .unwrap();
        let expected = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";
        assert_eq!(URL_SAFE_NO_PAD.encode(body), expected);
    }

    #[test]
    fn bad_keys_and_large_payloads_are_named() {
        assert_eq!(UaKeys::parse("AAAA", "BTBZMqHH6r4Tts7J_aSIgg").unwrap_err(), KeyError::P256dh);
        let p256dh = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        assert_eq!(UaKeys::parse(p256dh, "AAAA").unwrap_err(), KeyError::Auth);
        let ua = UaKeys::parse(p256dh, "BTBZMqHH6r4Tts7J_aSIgg").unwrap();
        assert!(matches!(encrypt(&ua, &vec![b'x'; MAX_PAYLOAD + 1]), Err(KeyError::TooLarge(_))));
        assert_eq!(encrypt(&ua, &vec![b'x'; MAX_PAYLOAD]).unwrap().len(), 4096);
    }

    #[test]
    fn a_vapid_header_names_the_origin_and_the_key() {
        let vapid = Vapid::from_pem(&Vapid::generate_pem(), "mailto:ops@example.com").unwrap();
        let header = vapid.authorization("https://push.example.com", 1_000);
        assert!(header.starts_with("vapid t="), "{header}");
        assert!(header.ends_with(&format!(", k={}", vapid.public_key())));
        assert_eq!(URL_SAFE_NO_PAD.decode(vapid.public_key()).unwrap().len(), 65);
        assert!(Vapid::from_pem("nope", "mailto:a@b").is_err());
        assert!(Vapid::from_pem(&Vapid::generate_pem(), "ops@example.com").is_err());
    }
}
