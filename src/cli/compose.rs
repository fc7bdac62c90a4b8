//! Start-up composition: builds every configured provider, its secret sink and the AWS SDK
//! configuration they need, and hands them to the engine. Adding a provider kind edits this
//! file and the provider's own module, never the engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, ProviderKind, SinkConfig};
use crate::engine::Engine;
use crate::providers::Provider;
use crate::providers::aws_iam::{AwsIamProvider, sdk_config};
use crate::providers::inventory::InventoryProvider;
use crate::providers::postgres::PostgresProvider;
use crate::providers::sink::{FileSink, SecretSink, SecretsManagerSink};

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
