use std::io::Write;

use jsonwebtoken::{EncodingKey, Header};
use sha2::Digest;

use super::*;

/// Every RPC of the protos, with the scope the issue assigns it.
#[test]
fn every_rpc_of_the_protos_has_its_scope() {
    let expected = [
        ("Tenants/Get", Scope::Read),
        ("Tenants/List", Scope::Read),
        ("Tenants/Register", Scope::Write),
        ("Tenants/Update", Scope::Write),
        ("Tenants/Deregister", Scope::Admin),
        ("Migrations/Current", Scope::Read),
        ("Migrations/History", Scope::Read),
        ("Migrations/Heads", Scope::Read),
        ("Migrations/Plan", Scope::Read),
        ("Migrations/Verify", Scope::Read),
        ("Migrations/Upgrade", Scope::Write),
        ("Migrations/Downgrade", Scope::Write),
        ("Migrations/Cancel", Scope::Write),
        ("Migrations/Stamp", Scope::Admin),
        ("Migrations/Onboard", Scope::Admin),
        ("Rollouts/Start", Scope::Write),
        ("Rollouts/Get", Scope::Read),
        ("Rollouts/List", Scope::Read),
        ("Rollouts/Watch", Scope::Read),
        ("Rollouts/Pause", Scope::Write),
        ("Rollouts/Resume", Scope::Write),
        ("Rollouts/Cancel", Scope::Write),
        ("Rollouts/RetryFailed", Scope::Write),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/fleetmig/v1");
    let mut in_protos = vec![];
    for file in ["tenants.proto", "migrations.proto", "rollouts.proto"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let service = text
            .lines()
            .find_map(|l| l.strip_prefix("service "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string();
        for l in text.lines() {
            if let Some(rest) = l.trim().strip_prefix("rpc ") {
                in_protos.push(format!("{service}/{}", rest.split('(').next().unwrap()));
            }
        }
    }
    let mut listed: Vec<String> = expected.iter().map(|(m, _)| m.to_string()).collect();
    in_protos.sort();
    listed.sort();
    assert_eq!(
        in_protos, listed,
        "a new RPC needs its scope here and in auth::required"
    );
    for (method, scope) in expected {
        assert_eq!(
            required(&format!("/fleetmig.v1.{method}")),
            Access::Needs(scope),
            "{method}"
        );
    }
    assert_eq!(
        required("/fleetmig.v1.Tenants/Nope"),
        Access::Needs(Scope::Admin)
    );
    assert_eq!(required("/grpc.health.v1.Health/Check"), Access::Health);
    assert_eq!(
        required("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
        Access::Reflection
    );
}

struct Keys {
    encoding: EncodingKey,
    _dir: tempfile::TempDir,
    config: AuthConfig,
}

fn keys(token_for_ci: &str) -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let public = dir.path().join("jwt.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let tokens = dir.path().join("tokens.toml");
    let mut f = std::fs::File::create(&tokens).unwrap();
    writeln!(
        f,
        "[[token]]\nsubject = \"ci\"\nscopes = [\"read\"]\nsha256 = \"{}\"",
        hex::encode(sha2::Sha256::digest(token_for_ci.as_bytes()))
    )
    .unwrap();
    let config = AuthConfig {
        tokens_file: Some(tokens),
        jwt: Some(JwtConfig {
            public_key: public,
            algorithm: "ES256".into(),
            issuer: "https://idp.test/".into(),
            audience: "fleetmig".into(),
            scope_claim: "scope".into(),
        }),
        ..AuthConfig::default()
    };
    Keys {
        encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        _dir: dir,
        config,
    }
}

fn jwt(keys: &Keys, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &keys.encoding,
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn check(auth: &Authenticator, path: &str, token: Option<&str>) -> Result<Caller, AuthError> {
    let header = token.map(|t| format!("Bearer {t}"));
    auth.check(path, header.as_deref(), None, "req-1".into())
}

#[test]
fn static_tokens_and_jwts_authenticate_and_scopes_authorize() {
    let k = keys("s3cr3t-ci-token");
    let auth = Authenticator::load(&k.config).unwrap();
    let list = "/fleetmig.v1.Tenants/List";
    let upgrade = "/fleetmig.v1.Migrations/Upgrade";

    let ci = check(&auth, list, Some("s3cr3t-ci-token")).unwrap();
    assert_eq!((ci.subject.as_str(), ci.via), ("ci", Via::StaticToken));
    assert!(matches!(
        check(&auth, upgrade, Some("s3cr3t-ci-token")),
        Err(AuthError::Denied(m)) if m.contains("needs scope 'write'") && m.contains("ci has read")
    ));
    assert!(matches!(
        check(&auth, list, Some("s3cr3t-ci-tokeN")),
        Err(AuthError::Unauthenticated(_))
    ));
    assert!(
        matches!(check(&auth, list, None), Err(AuthError::Unauthenticated(m)) if m.contains("Bearer"))
    );
    assert!(matches!(
        auth.check(list, Some("Basic abc"), None, "r".into()),
        Err(AuthError::Unauthenticated(m)) if m.contains("Bearer <token>")
    ));

    let base = serde_json::json!({"sub": "rollout-bot", "iss": "https://idp.test/", "aud": "fleetmig", "exp": now() + 300, "scope": "openid write"});
    let valid = jwt(&k, base.clone());
    let bot = check(&auth, upgrade, Some(&valid)).unwrap();
    assert_eq!((bot.subject.as_str(), bot.via), ("rollout-bot", Via::Jwt));
    assert_eq!(bot.request_id, "req-1");
    assert!(matches!(
        check(&auth, "/fleetmig.v1.Migrations/Stamp", Some(&valid)),
        Err(AuthError::Denied(_))
    ));

    let with = |field: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[field] = value;
        jwt(&k, c)
    };
    let cases = [
        (with("exp", (now() - 3600).into()), "expired"),
        (
            with("aud", "someone-else".into()),
            "not meant for this service",
        ),
        (with("iss", "https://evil.test/".into()), "issuer"),
    ];
    for (token, why) in cases {
        assert!(
            matches!(check(&auth, list, Some(&token)), Err(AuthError::Unauthenticated(ref m)) if m.contains(why)),
            "{why}: {:?}",
            check(&auth, list, Some(&token))
        );
    }
    // Signed by another key: same claims, bad signature.
    let other = keys("x");
    let forged = jwt(&other, base.clone());
    assert!(
        matches!(check(&auth, list, Some(&forged)), Err(AuthError::Unauthenticated(m)) if m.contains("signature"))
    );
    // Tampered payload: the signature no longer matches.
    let mut parts: Vec<String> = valid.split('.').map(str::to_string).collect();
    parts[1] = with("scope", "admin".into())
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(matches!(
        check(&auth, list, Some(&parts.join("."))),
        Err(AuthError::Unauthenticated(_))
    ));
    // No scope claim: authenticated, but may do nothing.
    let mut c = base.clone();
    c.as_object_mut().unwrap().remove("scope");
    assert!(
        matches!(check(&auth, list, Some(&jwt(&k, c))), Err(AuthError::Denied(m)) if m.contains("has none"))
    );
    // Array form of the scope claim.
    assert!(
        check(
            &auth,
            "/fleetmig.v1.Migrations/Stamp",
            Some(&with("scope", serde_json::json!(["admin"])))
        )
        .is_ok()
    );
}

#[test]
fn health_is_open_reflection_is_not_by_default_and_mode_none_allows_all() {
    let k = keys("t");
    let auth = Authenticator::load(&k.config).unwrap();
    assert!(check(&auth, "/grpc.health.v1.Health/Check", None).is_ok());
    let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    assert!(matches!(
        check(&auth, reflection, None),
        Err(AuthError::Unauthenticated(_))
    ));
    assert!(check(&auth, reflection, Some("t")).is_ok());

    let none = Authenticator::load(&AuthConfig {
        mode: AuthMode::None,
        ..AuthConfig::default()
    })
    .unwrap();
    assert_eq!(
        check(&none, "/fleetmig.v1.Migrations/Stamp", None)
            .unwrap()
            .via,
        Via::Anonymous
    );
}

#[test]
fn certificates_map_to_scopes_and_tokens_name_the_certificate() {
    let mut k = keys("t");
    k.config
        .certificates
        .insert("rollout-bot".into(), vec![Scope::Write]);
    let auth = Authenticator::load(&k.config).unwrap();
    let upgrade = "/fleetmig.v1.Migrations/Upgrade";
    let c = auth
        .check(upgrade, None, Some("rollout-bot"), "r".into())
        .unwrap();
    assert_eq!(
        (c.via, c.who()),
        (Via::Certificate, "rollout-bot (certificate)".to_string())
    );
    assert!(matches!(
        auth.check(upgrade, None, Some("stranger"), "r".into()),
        Err(AuthError::Unauthenticated(_))
    ));
    let c = auth
        .check(
            "/fleetmig.v1.Tenants/List",
            Some("Bearer t"),
            Some("stranger"),
            "r".into(),
        )
        .unwrap();
    assert_eq!(c.who(), "ci (token, certificate stranger)");
}

#[test]
fn misconfiguration_names_the_key() {
    let e = Authenticator::load(&AuthConfig::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("auth.mode") && e.contains("tokens_file"), "{e}");
    let mut k = keys("t");
    k.config.jwt.as_mut().unwrap().algorithm = "HS256".into();
    let e = Authenticator::load(&k.config).err().unwrap().to_string();
    assert!(e.contains("auth.jwt.algorithm"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tokens.toml");
    std::fs::write(
        &bad,
        "[[token]]\nsubject = \"x\"\nscopes = [\"read\"]\nsha256 = \"abc\"\n",
    )
    .unwrap();
    let e = Authenticator::load(&AuthConfig {
        tokens_file: Some(bad),
        ..AuthConfig::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("auth.tokens_file") && e.contains("token #1 (x)") && e.contains("64 hex"),
        "{e}"
    );
    let loaded = tokens::load_static(k.config.tokens_file.as_ref().unwrap()).unwrap();
    let hash = hex::encode(sha2::Sha256::digest(b"t"));
    let shown = format!("{loaded:?}");
    assert!(
        shown.contains("[REDACTED]") && !shown.contains(&hash),
        "{shown}"
    );
}
