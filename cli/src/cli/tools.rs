//! Operator tools of the `redistribute` binary: `token` mints a development JWT, `config`
//! prints a commented sample TOML file with every key and its default, `completions` prints a
//! shell completion script.
//!
//! The sample file is generated from the serve flags' own definitions (help text, environment
//! variable, `[default: …]`), so it cannot list a key the server does not have or miss one it
//! has.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Args, Command};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// `redistribute token`: mint a JWT the server accepts, for development and tests.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// HS256 secret, the same as the server's --jwt-secret.
    #[arg(
        long,
        value_name = "SECRET",
        env = "REDISTRIBUTE_JWT_SECRET",
        hide_env_values = true,
        required_unless_present = "private_key",
        conflicts_with = "private_key"
    )]
    pub secret: Option<String>,
    /// RS256 or ES256 private key (PEM) matching the server's --jwt-public-key.
    #[arg(long, value_name = "PEM")]
    pub private_key: Option<PathBuf>,
    /// Subject (`sub` claim); `{sub}` in channel patterns stands for it.
    #[arg(long, value_name = "SUBJECT")]
    pub sub: Option<String>,
    /// Channel pattern the token may subscribe to (`chat`, `room:*`, `user:{sub}`); repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub subscribe: Vec<String>,
    /// Channel pattern the token may publish to; repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub publish: Vec<String>,
    /// Lifetime in seconds (`exp` claim), at least 1.
    #[arg(long, value_name = "SECS", default_value = "3600", value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: u64,
}

/// The signed token for `args`.
pub fn mint_token(args: &TokenArgs) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let exp = now.checked_add(args.ttl).context("--ttl is too large")?;
    let mut claims = json!({
        "exp": exp,
        "iat": now,
        "subscribe": args.subscribe,
        "publish": args.publish,
    });
    if let Some(sub) = &args.sub {
        claims["sub"] = json!(sub);
    }
    let (header, key) = match (&args.secret, &args.private_key) {
        (Some(secret), None) => {
            if secret.len() < MIN_SECRET_BYTES {
                bail!("--secret must be at least {MIN_SECRET_BYTES} bytes, as the server's --jwt-secret");
            }
            (
                Header::new(Algorithm::HS256),
                EncodingKey::from_secret(secret.as_bytes()),
            )
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --private-key {}", path.display()))?;
            if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
                (Header::new(Algorithm::RS256), key)
            } else if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
                (Header::new(Algorithm::ES256), key)
            } else {
                bail!(
                    "--private-key {} holds no RSA or EC private key in PEM format",
                    path.display()
                );
            }
        }
        _ => bail!("give one of --secret (or REDISTRIBUTE_JWT_SECRET) and --private-key"),
    };
    jsonwebtoken::encode(&header, &claims, &key).context("cannot sign the token")
}

/// The shortest HS256 secret the server accepts (`--jwt-secret`).
const MIN_SECRET_BYTES: usize = 32;

/// Keys of the serve flags that are not configuration keys of the file.
const NOT_IN_FILE: &[&str] = &["config", "help"];

/// The sample TOML file for the serve flags of `serve`: one commented entry per key, with its
/// help text, flag, environment variable and default.
pub fn sample_config(serve: &Command) -> String {
    let mut out = String::from(
        "# redistribute configuration file: `redistribute --config FILE`, or REDISTRIBUTE_CONFIG.\n\
         # Every key is optional; the value shown is the default. Flags win over REDISTRIBUTE_*\n\
         # environment variables, which win over this file. Unknown keys stop the server.\n\
         # `redistribute check-config FILE` validates a file and prints the result.\n",
    );
    for arg in serve.get_arguments() {
        let key = arg.get_id().as_str();
        if NOT_IN_FILE.contains(&key) || arg.is_positional() {
            continue;
        }
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let (text, default) = split_default(&help);
        out.push('\n');
        let text = text.trim_end_matches('.');
        for line in wrap(&format!("{text}."), 96) {
            let _ = writeln!(out, "# {line}");
        }
        let flag = arg.get_long().map(|l| format!("--{l}")).unwrap_or_default();
        let env = arg
            .get_env()
            .map(|e| format!(", environment {}", e.to_string_lossy()))
            .unwrap_or_default();
        let multiple = matches!(arg.get_action(), ArgAction::Append);
        let value = match (arg.get_action(), default) {
            (ArgAction::SetTrue, _) => "false".to_owned(),
            (_, Some(default)) => toml_value(default),
            (_, None) if multiple => "[]".to_owned(),
            (_, None) => {
                let name = arg
                    .get_value_names()
                    .and_then(|names| names.first())
                    .map(ToString::to_string)
                    .unwrap_or_else(|| key.to_uppercase());
                let _ = writeln!(out, "# Flag {flag}{env}. Not set by default.");
                let _ = writeln!(out, "#{key} = \"<{name}>\"");
                continue;
            }
        };
        let _ = writeln!(out, "# Flag {flag}{env}.");
        let _ = writeln!(out, "#{key} = {value}");
    }
    out
}

/// Splits `"Text [default: X]."` into the text and `X`.
fn split_default(help: &str) -> (&str, Option<&str>) {
    match help.rfind("[default: ") {
        Some(start) => {
            let rest = &help[start + "[default: ".len()..];
            match rest.find(']') {
                Some(end) => (help[..start].trim_end(), Some(&rest[..end])),
                None => (help, None),
            }
        }
        None => (help, None),
    }
}

/// A default as TOML: numbers and booleans bare, anything else a quoted string.
fn toml_value(default: &str) -> String {
    if default.parse::<i64>().is_ok() || default == "true" || default == "false" {
        default.to_owned()
    } else {
        toml::Value::String(default.to_owned()).to_string()
    }
}

/// `text` cut into lines of at most about `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_split_from_help() {
        assert_eq!(
            split_default("Address [default: 127.0.0.1:8080]."),
            ("Address", Some("127.0.0.1:8080"))
        );
        assert_eq!(split_default("No default."), ("No default.", None));
        assert_eq!(
            split_default("Broken [default: x"),
            ("Broken [default: x", None)
        );
    }

    #[test]
    fn values_are_typed() {
        assert_eq!(toml_value("16"), "16");
        assert_eq!(toml_value("rd:"), "\"rd:\"");
        assert_eq!(toml_value("a\"b"), "'a\"b'");
    }

    #[test]
    fn wrapping_keeps_every_word() {
        let text = "one two three four five six seven";
        let lines = wrap(text, 9);
        assert!(lines.iter().all(|l| l.len() <= 9), "{lines:?}");
        assert_eq!(lines.join(" "), text);
    }
}
