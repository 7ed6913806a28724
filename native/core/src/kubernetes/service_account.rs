//! The service account's files, read here and nowhere else (the Elixir strategy reads none):
//! `token` at every request (kubelet rewrites projected tokens before they expire), `ca.crt` when a
//! client is built, and `namespace` at the start of each task when `kubernetes_namespace` is unset
//! (a release may start before the service account is mounted: the next round reads it again).

use std::path::{Path, PathBuf};

use crate::event::{Error, ErrorKind};

/// The CA bundle the API server's certificate is checked against (when the file exists).
pub(super) fn ca_file(dir: &Path) -> PathBuf {
    dir.join("ca.crt")
}

/// The path of the token, for [`token`].
pub(super) fn token_file(dir: &Path) -> PathBuf {
    dir.join("token")
}

/// The bearer token, trimmed; a missing or empty file is a `:config` error naming it.
pub(super) fn token(file: &Path) -> Result<String, Error> {
    // A small local file (tmpfs in a pod): a blocking read costs microseconds.
    match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(Error::new(
            ErrorKind::Config,
            format!("the service account token {} is empty", file.display()),
        )),
        Err(e) => Err(Error::new(
            ErrorKind::Config,
            format!(
                "cannot read the service account token {}: {e}; mount the service account \
                 (automountServiceAccountToken: true) or set kubernetes_service_account_path",
                file.display()
            ),
        )),
    }
}

/// This pod's namespace, from the service account's `namespace` file; a missing or empty file is
/// a `:config` error naming the file and the keys that fix it.
pub(super) fn namespace(dir: &Path) -> Result<String, Error> {
    let path = dir.join("namespace");
    let problem = match std::fs::read_to_string(&path) {
        Ok(ns) if !ns.trim().is_empty() => return Ok(ns.trim().to_string()),
        Ok(_) => "is empty".to_string(),
        Err(e) => format!("cannot be read ({e})"),
    };
    Err(Error::new(
        ErrorKind::Config,
        format!(
            "the service account's namespace file {} {problem}: set :kubernetes_namespace in the \
             topology's config, or :kubernetes_service_account_path to the directory where the \
             service account is mounted (automountServiceAccountToken). Nothing is connected or \
             pruned until then; retrying",
            path.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lc_sa_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn namespace_is_read_trimmed_and_a_missing_or_empty_file_names_the_fix() {
        let d = dir("ns");
        let e = namespace(&d).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e
            .message
            .contains(&d.join("namespace").display().to_string()));
        assert!(e.message.contains(":kubernetes_namespace"));
        std::fs::write(d.join("namespace"), " \n").unwrap();
        assert!(namespace(&d).unwrap_err().message.contains("is empty"));
        std::fs::write(d.join("namespace"), "prod\n").unwrap();
        assert_eq!(namespace(&d).unwrap(), "prod");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn token_is_read_at_each_call() {
        let d = dir("token");
        let file = token_file(&d);
        assert!(token(&file).unwrap_err().message.contains("cannot read"));
        std::fs::write(&file, "t1\n").unwrap();
        assert_eq!(token(&file).unwrap(), "t1");
        std::fs::write(&file, "t2").unwrap();
        assert_eq!(token(&file).unwrap(), "t2");
        let _ = std::fs::remove_dir_all(&d);
    }
}
