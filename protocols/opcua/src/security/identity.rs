//! The user identity: the token sent when activating a session, and the
//! token type an endpoint must accept for it.

use crate::config::Identity;
use opcua::client::IdentityToken;
use opcua::types::UserTokenType;

use super::SecurityError;

/// The user identity token; reads the password now (so a rotated Secret
/// applies at the next connect).
pub(crate) fn identity_token(identity: &Identity) -> Result<IdentityToken, SecurityError> {
    match identity {
        Identity::Anonymous => Ok(IdentityToken::Anonymous),
        Identity::UserName { username, password } => {
            let pw = password
                .read()
                .map_err(|e| SecurityError::Setup(format!("password of user `{username}`: {e}")))?;
            Ok(IdentityToken::new_user_name(
                username.clone(),
                pw.expose().to_string(),
            ))
        }
        Identity::Certificate { cert, key } => IdentityToken::new_x509_path(cert, key)
            .map_err(|e| SecurityError::Setup(format!("user certificate: {e}"))),
    }
}

/// The token type an endpoint must accept for `identity`.
pub(crate) fn token_type(identity: &Identity) -> UserTokenType {
    match identity {
        Identity::Anonymous => UserTokenType::Anonymous,
        Identity::UserName { .. } => UserTokenType::UserName,
        Identity::Certificate { .. } => UserTokenType::Certificate,
    }
}
