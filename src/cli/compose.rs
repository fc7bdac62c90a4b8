//! Start-up composition: builds every configured provider, its secret sink and the AWS SDK
//! configuration they need, and hands them to the engine. Adding a provider kind edits this
//! file and the provider's own module, never the engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, ProviderKind, SinkConfig};
use crate::engine::Engine;
use crate::ports::{Provider, SecretSink};
use crate::providers::aws::sdk_config;
use crate::providers::aws_iam::AwsIamProvider;
use crate::providers::inventory::InventoryProvider;
use crate::providers::postgres::PostgresProvider;
use crate::providers::sink::{FileSink, SecretsManagerSink};

/// The built providers and their secret sinks, each keyed by the provider's configured name.
#[derive(Default)]
pub struct Adapters {
    pub providers: BTreeMap<String, Arc<dyn Provider>>,
    pub sinks: BTreeMap<String, Arc<dyn SecretSink>>,
}

/// Builds every provider in `config` and its sink. This reads provider secrets (database
/// URLs) and AWS credentials, so only the commands that call providers run it.
pub async fn adapters(config: &Config) -> anyhow::Result<Adapters> {
    let mut built = Adapters::default();
    let file_sink: Arc<dyn SecretSink> = Arc::new(FileSink::new(&config.data_dir));
    for p in &config.providers {
        let provider: Arc<dyn Provider> = match &p.kind {
            ProviderKind::Inventory { source } => Arc::new(InventoryProvider::open(
                p.name.clone(),
                source.clone(),
                &config.data_dir,
            )?),
            ProviderKind::Postgres { url } => Arc::new(PostgresProvider::connect_lazy(
                p.name.clone(),
                &url.read()?,
            )?),
            ProviderKind::AwsIam {
                endpoint,
                tag_keys,
                path_prefix,
            } => {
                let sdk = sdk_config(endpoint).await;
                Arc::new(AwsIamProvider::new(
                    p.name.clone(),
                    &sdk,
                    tag_keys.clone(),
                    path_prefix.clone(),
                ))
            }
        };
        let sink: Arc<dyn SecretSink> = match &p.sink {
            SinkConfig::File => file_sink.clone(),
            SinkConfig::SecretsManager { prefix, endpoint } => {
                let sdk = sdk_config(endpoint).await;
                Arc::new(SecretsManagerSink::new(&sdk, prefix.clone()))
            }
        };
        built.providers.insert(p.name.to_string(), provider);
        built.sinks.insert(p.name.to_string(), sink);
    }
    Ok(built)
}

/// Opens the engine with every configured provider: the store, the approval key, the policy
/// and the adapters `adapters` builds. For `serve`, the commands that read providers, tests
/// and benches alike.
pub async fn open_engine(config: &Config) -> anyhow::Result<Engine> {
    let Adapters { providers, sinks } = adapters(config).await?;
    Engine::open(config, providers, sinks).await
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The non-test code of every `.rs` file under `dir` (a file's `mod tests` is cut off).
    fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(sources(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read");
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(at) => text[..at].to_owned(),
                    None => text,
                };
                out.push((path, code));
            }
        }
        out
    }

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    /// The circle engine → providers → config → aws_iam → engine stays broken: the engine
    /// reaches providers through `ports` only, adapters and config never import the engine or
    /// start-up code, and config never imports an adapter.
    #[test]
    fn engine_and_adapters_meet_only_in_ports_and_start_up() {
        let rules: [(&str, &[&str]); 4] = [
            ("engine", &["crate::providers", "crate::cli"]),
            ("providers", &["crate::engine", "crate::cli"]),
            (
                "ports.rs",
                &["crate::engine", "crate::providers", "crate::cli"],
            ),
            (
                "config.rs",
                &["crate::engine", "crate::providers", "crate::cli"],
            ),
        ];
        for (part, forbidden) in rules {
            let at = src().join(part);
            let files = if at.is_dir() {
                sources(&at)
            } else {
                let text = std::fs::read_to_string(&at).expect("read");
                let code = text
                    .find("#[cfg(test)]\nmod tests")
                    .map_or(text.clone(), |i| text[..i].to_owned());
                vec![(at, code)]
            };
            assert!(!files.is_empty(), "no sources under {part}");
            for (path, code) in files {
                // The conformance suite and the index's guard are test-only modules, which
                // build what they test the way start-up does.
                if path.ends_with("providers/conformance.rs")
                    || path.ends_with("engine/index_guard.rs")
                {
                    continue;
                }
                for f in forbidden {
                    assert!(!code.contains(f), "{} names `{f}`", path.display());
                }
            }
        }
    }

    /// Only the engine makes an `ApprovedPlan`: its constructor is called from `engine/` alone.
    #[test]
    fn only_the_engine_makes_an_approved_plan() {
        let engine = src().join("engine");
        let mut callers = 0;
        for (path, code) in sources(&src()) {
            if code.contains("ApprovedPlan::of_applying") {
                assert!(
                    path.starts_with(&engine),
                    "{} makes an ApprovedPlan",
                    path.display()
                );
                callers += 1;
            }
        }
        assert!(
            callers > 0,
            "the engine makes its plans with `ApprovedPlan::of_applying`"
        );
    }

    /// A provider whose sink is missing, or keyed under a look-alike name, is refused when the
    /// engine opens, not when its first secret has nowhere to go.
    #[tokio::test]
    async fn every_provider_needs_its_own_sink() {
        let dir = tempfile::tempdir().expect("dir");
        let overrides = crate::config::Overrides {
            config_file: None,
            data_dir: Some(dir.path().join("data")),
        };
        let config = crate::config::Config::from_toml("", None, &overrides).expect("config");
        let super::Adapters { providers, sinks } = super::adapters(&config).await.expect("build");
        let name = providers.keys().next().expect("a demo provider").clone();
        let mut renamed = sinks.clone();
        let sink = renamed.remove(&name).expect("its sink");
        renamed.insert(format!("{} ", name.to_uppercase()), sink);
        let err = super::Engine::open(&config, providers.clone(), renamed)
            .await
            .err()
            .expect("refused");
        assert_eq!(
            err.to_string(),
            format!("provider `{name}` has no secret sink")
        );
        let engine = super::Engine::open(&config, providers, sinks)
            .await
            .expect("open");
        assert!(engine.provider_names().contains(&name));
    }
}
