//! Secure sessions: which endpoint a device's settings allow (`auto` = the
//! strongest on offer), whether the server's certificate is trusted (trust
//! list, pinned fingerprint, or an explicit auto-accept), the user identity
//! token, and the client's own application certificate (generated once into
//! the PKI directory and reused, or loaded from files).
//!
//! Trust is decided here, before a secure channel is opened, so that a
//! rejection says exactly what to do: which file to move where, or which
//! fingerprint to pin. Its validity dates, host name and application URI
//! are checked here too (`server_checks`); the library's certificate store
//! then checks the trust list, key length and signature again when the
//! session is created. Each trust mode has its own store, so a certificate
//! pinned for one device, or auto-accepted for another, is never trusted
//! by a device with strict trust.
//!
//! Split by concept: `clients` (building the OPC UA clients), `endpoint`
//! (choosing the endpoint), `trust` (whether the server's certificate is
//! trusted, and so which client to use), `server_checks` (a trusted
//! server certificate's dates, host name and application URI),
//! `certificate` (the client's own application certificate) and
//! `identity` (the user identity token).

mod certificate;
mod clients;
mod endpoint;
mod identity;
mod server_checks;
mod trust;

pub(crate) use certificate::fingerprint;
pub(crate) use clients::Clients;
pub(crate) use endpoint::select_endpoint;
pub(crate) use identity::{identity_token, token_type};

/// Why a secure session could not be prepared. `Trust` and `Auth` are
/// operator-actionable and logged at warn with the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecurityError {
    /// The server's certificate is not trusted (or not the pinned one).
    #[error("{0}")]
    Trust(String),
    /// No offered endpoint matches the device's policy/mode/identity.
    #[error("{0}")]
    NoEndpoint(String),
    /// The client side is not usable: own certificate, user identity files.
    #[error("{0}")]
    Setup(String),
}
