//! Certificates for the province's parts, issued by its CA the way the
//! provincial IT department would: one identity (agency, role, name) each.

use lgsp_certs::ca::{CertificateAuthority, LeafSpec};
use lgsp_certs::{AgencyCode, CertError, Credentials, Role, SpiffeId};

/// Who a certificate is for.
#[derive(Clone, Copy, Debug)]
pub struct Holder<'a> {
    /// The agency's QCVN 102 code.
    pub agency: &'a str,
    /// What it does: node, registry, hub or admin.
    pub role: Role,
    /// Its name within the agency (`node-1`, `registry-2`).
    pub name: &'a str,
    /// The agency's name, put in the certificate's subject (UTF-8).
    pub display: Option<&'a str>,
}

/// A certificate, its key and the CA's certificate, and its serial.
pub struct Issued {
    /// What the holder presents.
    pub creds: Credentials,
    /// The certificate's serial, to revoke it.
    pub serial: String,
}

// By hand, so that printing an issued certificate never prints its private
// key (`Credentials` prints its PEM).
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// Issues a certificate for `holder`, valid for `days`, from `ca`. Fails if
/// the agency code or name is not a valid SPIFFE id part, or the CA cannot
/// sign.
pub fn issue(
    ca: &mut CertificateAuthority,
    holder: Holder<'_>,
    days: i64,
) -> Result<Issued, CertError> {
    let id = SpiffeId::new(
        ca.trust_domain(),
        AgencyCode::new(holder.agency)?,
        holder.role,
        holder.name,
    )?;
    let mut spec = LeafSpec::for_days(id, days)?;
    spec.display_name = holder.display.map(str::to_owned);
    // Every server of this province runs on this host, and tools that check
    // host names reach it as localhost or 127.0.0.1.
    spec.dns = vec!["localhost".into()];
    spec.ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    issue_spec(ca, &spec)
}

/// Issues a certificate as `spec` asks, from `ca`. Fails if the CA cannot
/// sign or the issued PEM does not parse back.
pub fn issue_spec(ca: &mut CertificateAuthority, spec: &LeafSpec) -> Result<Issued, CertError> {
    let issued = ca.issue(spec)?;
    let creds = Credentials::from_pem(&issued.cert_pem, &issued.key_pem, ca.cert_pem())?;
    Ok(Issued {
        creds,
        serial: issued.serial,
    })
}
