//! The bearer tokens of `[admin] tokens_file`: reading the file (`SCOPE TOKEN`
//! lines), keeping only each token's SHA-256 digest, and finding a presented
//! token's scope by comparing digests in constant time.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Auth, Scope};

/// Shortest token accepted from the tokens file.
const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read admin.tokens_file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin.tokens_file {path}, line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("admin.tokens_file {0} holds no token; add lines like `admin <token>`")]
    Empty(PathBuf),
}

/// Each token's SHA-256 digest and its scope.
pub(super) type TokenList = Vec<([u8; 32], Scope)>;

impl Auth {
    /// The scope of `token`, if it is one of ours. Every stored digest is
    /// compared, whatever matched, so the time taken says nothing.
    pub fn scope_of(&self, token: &str) -> Option<Scope> {
        let digest = sha256(token.as_bytes());
        let mut found = None;
        for (known, scope) in &self.tokens {
            if constant_time_eq(known, &digest) {
                found = Some(*scope);
            }
        }
        found
    }
}

pub(super) fn read_tokens(path: &Path) -> Result<TokenList, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let tokens = parse_tokens(&text).map_err(|(line, reason)| Error::Line {
        path: path.to_owned(),
        line,
        reason,
    })?;
    if tokens.is_empty() {
        return Err(Error::Empty(path.to_owned()));
    }
    Ok(tokens)
}

/// `SCOPE TOKEN` lines; `#` starts a comment. Errors give the line number.
pub(super) fn parse_tokens(text: &str) -> Result<TokenList, (usize, String)> {
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(scope), Some(token), None) = (words.next(), words.next(), words.next()) else {
            return Err((n + 1, "expected `SCOPE TOKEN` (scope read or admin)".into()));
        };
        let scope = match scope {
            "read" => Scope::Read,
            "admin" => Scope::Admin,
            other => {
                return Err((
                    n + 1,
                    format!("unknown scope `{other}` (use read or admin)"),
                ));
            }
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err((
                n + 1,
                format!("the token is shorter than {MIN_TOKEN_LEN} characters"),
            ));
        }
        tokens.push((sha256(token.as_bytes()), scope));
    }
    Ok(tokens)
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality that looks at every byte whatever differs first.
pub(super) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_file_gives_scopes_and_names_its_bad_line() {
        let tokens = parse_tokens(
            "# ops\nadmin 0123456789abcdef0123\n\nread  fedcba9876543210fedc  # support\n",
        )
        .unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1].1, Scope::Read);
        let (line, reason) =
            parse_tokens("admin 0123456789abcdef\nwrite 0123456789abcdef\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(reason.contains("write"), "{reason}");
        assert!(
            parse_tokens("read short")
                .unwrap_err()
                .1
                .contains("shorter")
        );
        assert!(parse_tokens("read").unwrap_err().1.contains("SCOPE TOKEN"));
    }
}
