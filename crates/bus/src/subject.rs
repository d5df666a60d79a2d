//! NATS subject syntax and wildcard matching, shared by both bus implementations.

use crate::BusError;

/// Checks subject syntax: dot-separated non-empty tokens without whitespace; wildcards
/// (`*` for one token, `>` for the rest) only in filters.
pub fn validate_subject(subject: &str, is_filter: bool) -> Result<(), BusError> {
    let invalid = |reason: &str| BusError::InvalidSubject { subject: subject.to_owned(), reason: reason.to_owned() };
    if subject.is_empty() || subject.len() > 512 {
        return Err(invalid("subjects are 1..=512 bytes"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (position, token) in tokens.iter().enumerate() {
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return Err(invalid("tokens must be non-empty and contain no whitespace"));
        }
        let wildcard = *token == "*" || *token == ">";
        if wildcard && !is_filter {
            return Err(invalid("wildcards are only allowed in consumer filters"));
        }
        if *token == ">" && position + 1 != tokens.len() {
            return Err(invalid("'>' must be the last token"));
        }
        if !wildcard && (token.contains('*') || token.contains('>')) {
            return Err(invalid("'*' and '>' must be whole tokens"));
        }
    }
    Ok(())
}

/// True when `subject` matches `filter` under NATS wildcard rules.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for filter_token in filter.split('.') {
        match (filter_token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (expected, Some(actual)) if expected == actual => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("ol.>", "ol.datanet.accepted"));
        assert!(!subject_matches("ol.>", "ol"));
        assert!(subject_matches("ol.*.accepted", "ol.datanet.accepted"));
        assert!(!subject_matches("ol.*", "ol.datanet.accepted"));
        assert!(subject_matches("ol.a", "ol.a"));
        assert!(!subject_matches("ol.a", "ol.a.b"));
        assert!(!subject_matches("ol.a.b", "ol.a"));
    }

    #[test]
    fn rejects_malformed_subjects() {
        for bad in ["", "ol..x", "ol. x", "ol.>.x", "ol.a*"] {
            assert!(validate_subject(bad, true).is_err(), "{bad:?}");
        }
        assert!(validate_subject("ol.*", false).is_err());
        assert!(validate_subject("ol.*.x.>", true).is_ok());
    }
}
