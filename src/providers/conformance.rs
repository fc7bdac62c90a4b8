//! The provider conformance suite: one set of checks every adapter passes. Each adapter gets a
//! test below that builds it against its real backend (the inventory file; PostgreSQL from
//! `NHI_TEST_PG_URL`, started by `./tests/run`) and runs `check` on one target it may change.
//!
//! - listing is sorted by id, stable, and `get` agrees with it;
//! - planning changes nothing;
//! - every step but `create_credential` is idempotent: applying it twice leaves what applying
//!   it once left;
//! - errors carry no secret material.

use super::{Provider, StepResult};
use crate::model::{Action, IdentityId};
use crate::ports::ApprovedPlan;

async fn fingerprints(p: &dyn Provider) -> Vec<(String, String)> {
    p.list()
        .await
        .expect("list")
        .iter()
        .map(|i| (i.id.to_string(), i.fingerprint()))
        .collect()
}

/// Runs the suite against `provider`, changing only `target` (revoking it).
pub async fn check(provider: &dyn Provider, target: &IdentityId) {
    let name = provider.name().to_string();
    // Listing: sorted, stable, consistent with `get`.
    let first = fingerprints(provider).await;
    assert!(!first.is_empty(), "{name}: lists nothing");
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(first, sorted, "{name}: list is not sorted by id");
    assert_eq!(
        first,
        fingerprints(provider).await,
        "{name}: two lists differ"
    );
    for (id, fp) in first.iter().take(5) {
        let id = IdentityId::parse(id).expect("id");
        let got = provider
            .get(&id)
            .await
            .expect("get")
            .expect("listed identity is found");
        assert_eq!(
            &got.fingerprint(),
            fp,
            "{name}: get disagrees with list for {id}"
        );
    }
    let missing = IdentityId::new(provider.name(), "role/no-such-identity-anywhere").expect("id");
    assert!(
        provider.get(&missing).await.expect("get").is_none(),
        "{name}: invents identities"
    );

    // Planning never changes anything.
    let identity = provider
        .get(target)
        .await
        .expect("get")
        .expect("target exists");
    if let Some(c) = identity.active_credentials().next() {
        let _ = provider.plan_rotation(&identity, c, std::time::Duration::from_secs(60));
    }
    let (steps, _) = provider
        .plan_revocation(&identity)
        .expect("plan revocation");
    assert_eq!(
        first,
        fingerprints(provider).await,
        "{name}: planning changed state"
    );

    // Applying a step twice equals applying it once.
    let plan = ApprovedPlan::for_conformance_tests(
        target.clone(),
        Action::Revoke,
        identity.credentials.iter().map(|c| c.id.clone()).collect(),
    );
    for step in &steps {
        let once = provider.apply_step(&plan, step).await.expect("apply once");
        assert!(
            matches!(once, StepResult::Done { .. }),
            "{name}: revocation steps return no secret"
        );
        let after_once = provider
            .get(target)
            .await
            .expect("get")
            .expect("target")
            .fingerprint();
        provider.apply_step(&plan, step).await.expect("apply twice");
        let after_twice = provider
            .get(target)
            .await
            .expect("get")
            .expect("target")
            .fingerprint();
        assert_eq!(
            after_once, after_twice,
            "{name}: step {} is not idempotent",
            step.index
        );
    }
    let revoked = provider.get(target).await.expect("get").expect("target");
    assert!(revoked.disabled, "{name}: revocation left sign-in enabled");
    assert_eq!(
        revoked.active_credentials().count(),
        0,
        "{name}: revocation left a credential active"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InventorySource;
    use crate::model::{ProviderName, Secret};
    use crate::providers::inventory::InventoryProvider;
    use crate::providers::postgres::PostgresProvider;

    #[tokio::test]
    async fn inventory_conforms() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("inv.toml");
        std::fs::write(&file, crate::config::DEMO_INVENTORIES[0].1).expect("write");
        let name = ProviderName::parse("inv").expect("name");
        let p =
            InventoryProvider::open(name, InventorySource::File(file), dir.path()).expect("open");
        check(&p, &IdentityId::parse("inv:user/ci-deploy").expect("id")).await;
    }

    #[tokio::test]
    async fn aws_iam_conforms() {
        use crate::config::TagKeys;
        use crate::providers::aws_iam::AwsIamProvider;
        let url = std::env::var("NHI_TEST_MOTO_URL").expect(
            "NHI_TEST_MOTO_URL is not set: run the suite with `./tests/run`, which starts moto",
        );
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&url)
            .credentials_provider(aws_sdk_iam::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await;
        // A path of this test's own: the provider sees only these users.
        let path = format!("/conformance{}/", uuid::Uuid::new_v4().simple());
        let iam = aws_sdk_iam::Client::new(&sdk);
        for user in ["svc-a", "svc-b", "svc-c"] {
            iam.create_user()
                .user_name(user)
                .path(&path)
                .send()
                .await
                .expect("user");
            iam.create_access_key()
                .user_name(user)
                .send()
                .await
                .expect("key");
        }
        iam.create_login_profile()
            .user_name("svc-b")
            .password("Conformance-Pw-1")
            .send()
            .await
            .expect("login profile");
        // Issue 9: `get` reads one identity with calls about it alone, and answers exactly
        // what `list` does, through inline, attached (customer and AWS managed) and group
        // policies, for a user and a role.
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let doc = |action: &str| {
            format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"*"}}]}}"#
            )
        };
        let managed = iam
            .create_policy()
            .policy_name(format!("conf-read-{tag}"))
            .policy_document(doc("s3:GetObject"))
            .send()
            .await
            .expect("policy");
        let managed = managed
            .policy()
            .and_then(|p| p.arn())
            .expect("arn")
            .to_owned();
        let group = format!("conf-{tag}");
        iam.create_group()
            .group_name(&group)
            .send()
            .await
            .expect("group");
        iam.put_group_policy()
            .group_name(&group)
            .policy_name("group-inline")
            .policy_document(doc("sqs:*"))
            .send()
            .await
            .expect("group policy");
        for arn in [managed.as_str(), "arn:aws:iam::aws:policy/ReadOnlyAccess"] {
            iam.attach_group_policy()
                .group_name(&group)
                .policy_arn(arn)
                .send()
                .await
                .expect("attach to group");
        }
        iam.add_user_to_group()
            .group_name(&group)
            .user_name("svc-a")
            .send()
            .await
            .expect("join group");
        iam.put_user_policy()
            .user_name("svc-a")
            .policy_name("user-inline")
            .policy_document(doc("dynamodb:GetItem"))
            .send()
            .await
            .expect("user policy");
        iam.attach_user_policy()
            .user_name("svc-c")
            .policy_arn(&managed)
            .send()
            .await
            .expect("attach to user");
        iam.create_role()
            .role_name(format!("conf-role-{tag}"))
            .path(&path)
            .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#)
            .send()
            .await
            .expect("role");
        iam.put_role_policy()
            .role_name(format!("conf-role-{tag}"))
            .policy_name("role-inline")
            .policy_document(doc("*"))
            .send()
            .await
            .expect("role policy");
        iam.attach_role_policy()
            .role_name(format!("conf-role-{tag}"))
            .policy_arn(&managed)
            .send()
            .await
            .expect("attach to role");
        // A user outside the provider's path is not found, as in a list.
        iam.create_user()
            .user_name(format!("conf-outside-{tag}"))
            .send()
            .await
            .expect("user outside the path");
        let name = ProviderName::parse("aws").expect("name");
        let p = AwsIamProvider::new(name, &sdk, TagKeys::default(), Some(path));
        let outside = IdentityId::parse(&format!("aws:user/conf-outside-{tag}")).expect("id");
        assert!(p.get(&outside).await.expect("get").is_none());
        let listed = p.list().await.expect("list");
        assert_eq!(listed.len(), 4, "three users and a role");
        for identity in &listed {
            let got = p.get(&identity.id).await.expect("get").expect("found");
            assert_eq!(&got, identity, "get and list differ for {}", identity.id);
        }
        let svc_a = &listed[1];
        assert!(
            svc_a.permissions.grants.len() >= 4,
            "svc-a's own and its group's policies: {:?}",
            svc_a.permissions.grants
        );
        assert!(listed[0].permissions.wildcard, "the role's inline `*`");
        check(&p, &IdentityId::parse("aws:user/svc-b").expect("id")).await;

        // An unreachable endpoint is a clear error, marked unavailable (so an apply retries).
        let dead = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .credentials_provider(aws_sdk_iam::config::Credentials::new(
                "AKIDEXAMPLE",
                "wrong-Secret-123",
                None,
                None,
                "test",
            ))
            .load()
            .await;
        let name = ProviderName::parse("aws").expect("name");
        let bad = AwsIamProvider::new(name, &dead, TagKeys::default(), None);
        let err = bad.list().await.expect_err("unreachable");
        assert!(
            matches!(err, crate::providers::ProviderError::Unavailable { .. }),
            "{err}"
        );
        let err = err.to_string();
        assert!(!err.contains("wrong-Secret-123"), "{err}");
        assert!(err.starts_with("provider `aws` is unavailable"), "{err}");
    }

    #[tokio::test]
    async fn postgres_conforms() {
        let url = std::env::var("NHI_TEST_PG_URL").expect(
            "NHI_TEST_PG_URL is not set: run the suite with `./tests/run`, which starts PostgreSQL",
        );
        let role = format!("conformance_{}", uuid::Uuid::new_v4().simple());
        let options: sqlx::postgres::PgConnectOptions = url.parse().expect("url");
        let admin = sqlx::PgPool::connect_with(options).await.expect("connect");
        sqlx::query(&format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'initial'"))
            .execute(&admin)
            .await
            .expect("create role");
        let name = ProviderName::parse("pg").expect("name");
        let p = PostgresProvider::connect_lazy(name, &Secret::new(url.clone())).expect("provider");
        check(
            &p,
            &IdentityId::parse(&format!("pg:role/{role}")).expect("id"),
        )
        .await;

        // An error carries no secret: a wrong password for a real server.
        let wrong = url.replacen("nhi-admin-pw", "wrong-Secret-123", 1);
        let name = ProviderName::parse("pg").expect("name");
        let bad = PostgresProvider::connect_lazy(name, &Secret::new(wrong)).expect("provider");
        let err = bad.list().await.expect_err("wrong password").to_string();
        assert!(
            !err.contains("wrong-Secret-123") && !err.contains("nhi-admin-pw"),
            "{err}"
        );
        assert!(err.starts_with("provider `pg`"), "{err}");
    }
}
