//! The one pagination convention of every list route: `limit` (1..=1000, default 100) items
//! per page and `after`, the previous page's `next_cursor`; a page answers `next_cursor` only
//! when more follow. Cursors are opaque: the service that issued one reads it back.
//!
//! The OpenAI-compatible lists (`/v1/fine_tuning/**`) answer OpenAI's shape instead, so its
//! clients page through them: `{"object":"list","data","has_more"}`, `limit` defaulting to
//! [`OPENAI_DEFAULT_LIMIT`] and `after` the id of the last item seen ([`OpenAiPageQuery`]).

use openledger_proto::common::v1::{PageRequest, PageResponse};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;

/// Items per page when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most items one page holds.
pub const MAX_LIMIT: u32 = 1_000;
/// Items per page of an OpenAI-shaped list when `limit` is absent (OpenAI's default).
pub const OPENAI_DEFAULT_LIMIT: u32 = 20;

/// `limit` alone, for lists that take no cursor (the leaderboard).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// Items to answer, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<u32>,
}

impl LimitQuery {
    /// The limit, or 400 naming it when out of range.
    pub fn limit(&self) -> Result<u32, ApiError> {
        checked_limit(self.limit)
    }
}

/// `limit` and `after`, for every paged list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page; absent for the first page.
    pub after: Option<String>,
}

impl PageQuery {
    /// The page request the services take, or 400 naming the limit when out of range.
    pub fn request(self) -> Result<PageRequest, ApiError> {
        Ok(PageRequest { page_size: checked_limit(self.limit)?, page_token: self.after.unwrap_or_default() })
    }
}

/// `limit` and `after` for OpenAI-shaped lists.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OpenAiPageQuery {
    /// Items per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000, default = 20)]
    pub limit: Option<u32>,
    /// The id of the last item of the previous page; absent for the first page.
    pub after: Option<String>,
}

impl OpenAiPageQuery {
    /// The page request the services take, or 400 naming the limit when out of range.
    pub fn request(self) -> Result<PageRequest, ApiError> {
        Ok(PageRequest {
            page_size: checked_limit_or(self.limit, OPENAI_DEFAULT_LIMIT)?,
            page_token: self.after.unwrap_or_default(),
        })
    }
}

/// `limit` and `after` for the ledger's lists, whose cursors are decimal numbers.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NumericPageQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page; absent (or empty) for the first page.
    #[param(pattern = "^[0-9]{0,19}$")]
    pub after: Option<String>,
}

impl NumericPageQuery {
    /// The page request the services take, or 400 naming the limit when out of range.
    pub fn request(self) -> Result<PageRequest, ApiError> {
        PageQuery { limit: self.limit, after: self.after }.request()
    }
}

/// The cursor of the next page from a service's page answer; `None` on the last page.
pub fn next_cursor(page: Option<PageResponse>) -> Option<String> {
    page.map(|page| page.next_page_token).filter(|token| !token.is_empty())
}

fn checked_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    checked_limit_or(limit, DEFAULT_LIMIT)
}

/// `limit`, `default` when absent, or 400 naming it when out of range.
pub fn checked_limit_or(limit: Option<u32>, default: u32) -> Result<u32, ApiError> {
    match limit.unwrap_or(default) {
        limit @ 1..=MAX_LIMIT => Ok(limit),
        other => Err(ApiError::invalid(format!("limit must be between 1 and {MAX_LIMIT}, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use openledger_core::ErrorCode;

    use super::*;

    fn page(limit: Option<u32>, after: Option<&str>) -> Result<PageRequest, ApiError> {
        PageQuery { limit, after: after.map(str::to_owned) }.request()
    }

    #[test]
    fn limits_default_to_100_and_stay_within_1_to_1000() {
        assert_eq!(page(None, None).expect("default").page_size, DEFAULT_LIMIT);
        assert_eq!(page(Some(1), None).expect("one").page_size, 1);
        assert_eq!(page(Some(1000), Some("c")).expect("max"), PageRequest { page_size: 1000, page_token: "c".into() });
        for limit in [0, 1001, u32::MAX] {
            let error = page(Some(limit), None).expect_err("out of range");
            assert_eq!(error.code, ErrorCode::InvalidArgument);
            assert!(error.message.contains("limit"), "{}", error.message);
        }
        assert!(LimitQuery { limit: Some(1001) }.limit().is_err());
    }

    #[test]
    fn openai_lists_default_to_20_items_and_pass_after_through() {
        let page = OpenAiPageQuery { limit: None, after: Some("ftjob-1".into()) }.request().expect("default");
        assert_eq!(page, PageRequest { page_size: OPENAI_DEFAULT_LIMIT, page_token: "ftjob-1".into() });
        assert!(OpenAiPageQuery { limit: Some(0), after: None }.request().is_err());
    }

    #[test]
    fn the_last_page_has_no_cursor() {
        assert_eq!(next_cursor(None), None);
        assert_eq!(next_cursor(Some(PageResponse { next_page_token: String::new() })), None);
        assert_eq!(next_cursor(Some(PageResponse { next_page_token: "x".into() })).as_deref(), Some("x"));
    }
}
