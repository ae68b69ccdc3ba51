//! Checks on e-mail addresses built from config or slice data, so nothing can smuggle a header
//! line (CR, LF) or an extra recipient into a notice.

/// Why a string is not an address bwmon puts in a header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AddressError {
    /// Over 254 bytes (its start is shown).
    #[error("address '{start}…' is longer than 254 bytes")]
    TooLong {
        /// Its first 32 characters.
        start: String,
    },
    /// No `@`.
    #[error("'{0}' is not an address like name@example.org")]
    NoAt(String),
    /// Characters an unquoted address cannot have.
    #[error("'{0}' is not an address like name@example.org (letters, digits and .-_+ only)")]
    Characters(String),
}

/// Accepts `local@domain` with the characters RFC 5322 allows unquoted; refuses everything
/// else (spaces, commas, angle brackets, control characters, more than 254 bytes).
///
/// # Errors
/// What is wrong with it.
pub(crate) fn validate(addr: &str) -> Result<(), AddressError> {
    if addr.len() > 254 {
        // By characters: a byte index could fall inside one and panic.
        return Err(AddressError::TooLong {
            start: addr.chars().take(32).collect(),
        });
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(AddressError::NoAt(addr.escape_debug().to_string()));
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
        Err(AddressError::Characters(addr.escape_debug().to_string()))
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
            // Long, and a character across the 32nd byte: said, not a panic.
            &format!("{}é{}@b", "x".repeat(31), "y".repeat(300)),
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
