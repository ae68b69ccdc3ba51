//! Checks on e-mail addresses built from config or slice data, so nothing can smuggle a header
//! line (CR, LF) or an extra recipient into a notice.

/// Accepts `local@domain` with the characters RFC 5322 allows unquoted; refuses everything
/// else (spaces, commas, angle brackets, control characters, more than 254 bytes).
///
/// # Errors
/// A message that names what is wrong.
pub(crate) fn validate(addr: &str) -> Result<(), String> {
    if addr.len() > 254 {
        return Err(format!(
            "address '{}…' is longer than 254 bytes",
            &addr[..32.min(addr.len())]
        ));
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(format!(
            "'{}' is not an address like name@example.org",
            addr.escape_debug()
        ));
    };
    let local_ok = !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let domain_ok = !domain.is_empty()
        && !domain.starts_with(['.', '-'])
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if local_ok && domain_ok {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not an address like name@example.org (letters, digits and .-_+ only)",
            addr.escape_debug()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn plain_addresses_pass_and_injections_do_not() {
        for ok in [
            "support@example.org",
            "pl-mom@planet-lab.org",
            "a.b+c@x-y.z",
        ] {
            validate(ok).unwrap();
        }
        for bad in [
            "",
            "no-at",
            "a@b\r\nBcc: x@y",
            "a b@c",
            "a@b,c@d",
            "<a@b>",
            "a@",
            "@b",
            "a@.b",
            &format!("{}@b", "x".repeat(300)),
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
