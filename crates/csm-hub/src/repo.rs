//! Checked names: repo ids, file names and revisions, and the URLs built
//! from them.

use crate::HubError;

/// The default branch.
pub const MAIN: &str = "main";

/// Checks a repo id the way the hub does (huggingface_hub's
/// `validate_repo_id`): `name` or `org/name`, letters, digits, `-`, `_`,
/// `.`, at most 96 characters, no `--` or `..`, not starting or ending with
/// `-` or `.`.
pub fn validate_repo_id(id: &str) -> Result<(), HubError> {
    let bad = |reason| {
        Err(HubError::InvalidRepoId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > 96 {
        return bad("longer than 96 characters");
    }
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return bad("more than one `/`");
    }
    for part in &parts {
        if part.is_empty() {
            return bad("empty part");
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad("only letters, digits, `-`, `_` and `.` are allowed");
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return bad("a part starts or ends with `-` or `.`");
        }
    }
    if id.contains("--") || id.contains("..") {
        return bad("`--` and `..` are not allowed");
    }
    Ok(())
}

/// Checks that `file` is a relative path inside a repo (`/`-separated, no
/// `..`, `.` or empty parts, no backslash).
pub fn validate_file_name(file: &str) -> Result<(), HubError> {
    let bad = |reason| {
        Err(HubError::InvalidFileName {
            file: file.to_string(),
            reason,
        })
    };
    if file.is_empty() {
        return bad("empty");
    }
    if file.starts_with('/') {
        return bad("absolute path");
    }
    if file.contains('\\') || file.contains('\0') {
        return bad("backslash or NUL");
    }
    if file
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return bad("empty, `.` or `..` part");
    }
    Ok(())
}

/// Checks a branch, tag or commit name used in URLs and under `refs/`.
pub fn validate_revision(revision: &str) -> Result<(), HubError> {
    let bad = |reason| {
        Err(HubError::InvalidRevision {
            revision: revision.to_string(),
            reason,
        })
    };
    if revision.is_empty() {
        return bad("empty");
    }
    if revision.starts_with('/') || revision.contains('\\') || revision.contains('\0') {
        return bad("absolute path, backslash or NUL");
    }
    if revision
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return bad("empty, `.` or `..` part");
    }
    if revision.chars().any(|c| c.is_control() || c == ' ') {
        return bad("spaces or control characters");
    }
    Ok(())
}

/// Whether `revision` is a full commit hash (40 lowercase hex digits).
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Percent-encodes everything but unreserved characters (and `/` when
/// `keep_slash`), as URL path segments need.
pub(crate) fn encode_path(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `{endpoint}/{repo}/resolve/{revision}/{file}` (huggingface_hub's
/// `hf_hub_url` for a model repo).
pub fn resolve_url(endpoint: &str, repo: &str, revision: &str, file: &str) -> String {
    format!(
        "{endpoint}/{repo}/resolve/{}/{}",
        encode_path(revision, false),
        encode_path(file, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        for ok in ["sesame/csm-1b", "gpt2", "unsloth/Llama-3.2-1B", "a_b/c.d"] {
            validate_repo_id(ok).unwrap();
        }
        for bad in [
            "", "a/b/c", "/abs", "a//b", "a/-b", "a/b.", "a--b/c", "a/..b", "a b/c", "../x",
        ] {
            assert!(validate_repo_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names_and_revisions() {
        validate_file_name("model.safetensors").unwrap();
        validate_file_name("sub/dir/x.json").unwrap();
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "a\\b"] {
            assert!(validate_file_name(bad).is_err(), "{bad}");
        }
        validate_revision("main").unwrap();
        validate_revision("refs/pr/1").unwrap();
        for bad in ["", "../x", "a/../b", "/x", "a b"] {
            assert!(validate_revision(bad).is_err(), "{bad}");
        }
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("main"));
    }

    #[test]
    fn urls_encode_revision_and_file() {
        assert_eq!(
            resolve_url("https://h", "a/b", "refs/pr/1", "dir/my file.json"),
            "https://h/a/b/resolve/refs%2Fpr%2F1/dir/my%20file.json"
        );
    }
}
