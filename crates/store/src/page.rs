//! Keyset pages for the common `PageRequest`: a list query asks for one row more than the page
//! holds, ordered by a unique key and starting after the previous page's token, and the page is
//! cut here. The token of the next page is the key of the page's last row, empty on the last page.

/// The rows a page holds for a requested size: 0 is `default`, above `max` is `max`.
pub fn page_size(requested: u32, default: u32, max: u32) -> u32 {
    if requested == 0 { default } else { requested.min(max) }
}

/// Cuts `rows`, fetched with a limit of `size + 1`, to `size`, and returns the next page's token:
/// the `key` of the last row kept when more followed, empty otherwise.
pub fn cut_page<T>(rows: &mut Vec<T>, size: u32, key: impl Fn(&T) -> String) -> String {
    let more = rows.len() > size as usize;
    rows.truncate(size as usize);
    if more { rows.last().map(key).unwrap_or_default() } else { String::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_and_clamp_and_pages_cut_at_their_last_key() {
        assert_eq!((page_size(0, 100, 1000), page_size(7, 100, 1000), page_size(5000, 100, 1000)), (100, 7, 1000));
        let mut rows = vec!["a", "b", "c"];
        assert_eq!(cut_page(&mut rows, 2, |row| row.to_string()), "b");
        assert_eq!(rows, ["a", "b"]);
        let mut last = vec!["a", "b"];
        assert_eq!(cut_page(&mut last, 2, |row| row.to_string()), "", "no row beyond the page: the last page");
        assert_eq!(last, ["a", "b"]);
    }
}
