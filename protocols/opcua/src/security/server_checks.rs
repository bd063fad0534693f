//! The checks of a trusted server certificate beyond trust itself: its
//! validity dates, the host name we connect to, and the server's
//! application URI. Done here rather than by the library, which looks for
//! the application URI only in the first subjectAltName entry (and skips
//! that entry when looking for the host): OPC UA (Part 6, 6.2.2) asks for
//! the URI *in* the subjectAltName, and node-opcua, among others, puts it
//! last, so the library refused every node-opcua server. The library still
//! checks the trust list, the key length and the server's signature.

use std::net::IpAddr;

use opcua::crypto::X509;
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

/// What a certificate's subjectAltName holds.
#[derive(Debug, Default, PartialEq)]
pub(super) struct AltNames {
    pub(super) uris: Vec<String>,
    pub(super) dns: Vec<String>,
    pub(super) ips: Vec<IpAddr>,
}

/// The subjectAltName entries of a DER certificate.
pub(super) fn alt_names(der: &[u8]) -> AltNames {
    let mut names = AltNames::default();
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return names;
    };
    let sans = cert
        .tbs_certificate
        .extensions
        .into_iter()
        .flatten()
        .filter(|e| e.extn_id == SubjectAltName::OID)
        .filter_map(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())
        .flat_map(|san| san.0);
    for name in sans {
        match name {
            GeneralName::UniformResourceIdentifier(uri) => names.uris.push(uri.to_string()),
            GeneralName::DnsName(dns) => names.dns.push(dns.to_string()),
            GeneralName::IpAddress(ip) => match ip.as_bytes().len() {
                4 => {
                    let b: [u8; 4] = ip.as_bytes().try_into().unwrap_or_default();
                    names.ips.push(IpAddr::from(b));
                }
                16 => {
                    let b: [u8; 16] = ip.as_bytes().try_into().unwrap_or_default();
                    names.ips.push(IpAddr::from(b));
                }
                _ => {}
            },
            _ => {}
        }
    }
    names
}

/// Checks the server certificate of `url` (already trusted): valid now,
/// issued for the host in `url`, and for `application_uri` (the server's,
/// from its endpoint description; not checked when the server gives none).
pub(super) fn check_server_certificate(
    url: &str,
    cert: &X509,
    der: &[u8],
    application_uri: &str,
) -> Result<(), String> {
    if let Err(e) = cert.is_time_valid(&chrono::Utc::now()) {
        return Err(format!(
            "server certificate of {url} is not valid now ({e}): renew it on the server (or check this machine's clock)"
        ));
    }
    let names = alt_names(der);
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        .unwrap_or_default();
    let host_ok = match host.parse::<IpAddr>() {
        Ok(ip) => names.ips.contains(&ip) || names.dns.contains(&host),
        Err(_) => names.dns.iter().any(|d| d.eq_ignore_ascii_case(&host)),
    };
    if !host_ok {
        return Err(format!(
            "server certificate of {url} is not issued for host `{host}` (its names: {}): connect with a name the certificate holds, or have the server's certificate reissued",
            describe(&names)
        ));
    }
    if !application_uri.is_empty() && !names.uris.iter().any(|u| u == application_uri) {
        return Err(format!(
            "server certificate of {url} is not issued for the server's application URI `{application_uri}` (its names: {})",
            describe(&names)
        ));
    }
    Ok(())
}

fn describe(names: &AltNames) -> String {
    let all: Vec<String> = names
        .uris
        .iter()
        .map(|u| format!("URI {u}"))
        .chain(names.dns.iter().map(|d| format!("DNS {d}")))
        .chain(names.ips.iter().map(|i| format!("IP {i}")))
        .collect();
    if all.is_empty() {
        "none".to_string()
    } else {
        all.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::crypto::X509Data;
    use opcua::types::ApplicationDescription;

    /// A certificate like node-opcua's: the application URI last.
    fn uri_last() -> (X509, Vec<u8>) {
        let mut data = X509Data::from(ApplicationDescription {
            application_uri: "urn:vendor:plc-7".into(),
            application_name: "plc-7".into(),
            ..Default::default()
        });
        // The library's order (URI first), rebuilt with the URI last.
        let alt = &mut data.alt_host_names;
        alt.names.0.clear();
        alt.add_dns("plc-7.example");
        alt.add_ipv4(&"127.0.0.1".parse().unwrap());
        alt.add_uri("urn:vendor:plc-7");
        data.key_size = 2048;
        data.certificate_duration_days = 30;
        let (cert, _) = X509::cert_and_pkey(&data).unwrap();
        let der = cert.to_der().unwrap();
        (cert, der)
    }

    #[test]
    fn the_uri_and_the_host_count_wherever_they_are_in_the_alt_names() {
        let (cert, der) = uri_last();
        let names = alt_names(&der);
        assert_eq!(names.uris, ["urn:vendor:plc-7"]);
        assert_eq!(names.dns, ["plc-7.example"]);
        let check = |url: &str, uri: &str| check_server_certificate(url, &cert, &der, uri);
        assert_eq!(
            check("opc.tcp://127.0.0.1:4840", "urn:vendor:plc-7"),
            Ok(())
        );
        assert_eq!(
            check("opc.tcp://PLC-7.example:4840/", "urn:vendor:plc-7"),
            Ok(())
        );
        // A server that names no application URI: nothing to compare.
        assert_eq!(check("opc.tcp://127.0.0.1:4840", ""), Ok(()));
        let e = check("opc.tcp://10.0.0.9:4840", "urn:vendor:plc-7").unwrap_err();
        assert!(
            e.contains("host `10.0.0.9`") && e.contains("DNS plc-7.example"),
            "{e}"
        );
        let e = check("opc.tcp://127.0.0.1:4840", "urn:vendor:other").unwrap_err();
        assert!(
            e.contains("urn:vendor:other") && e.contains("URI urn:vendor:plc-7"),
            "{e}"
        );
    }
}
