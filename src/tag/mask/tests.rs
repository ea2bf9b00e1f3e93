//! Table-driven tests of the detectors: a fake but real-looking secret of every kind, in
//! the forms node logs print them, and near misses that must be left alone.

use super::*;

/// (name, detector, message, the secret, what must still be there)
const SECRETS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "kubeadm_join_token_flag",
        "flag",
        "kubeadm join 10.0.0.5:6443 --token=9a08jv.c0izixklcxtmnze7 --v=5",
        "9a08jv.c0izixklcxtmnze7",
        "--token=***",
    ),
    (
        "token_flag_with_space",
        "flag",
        "/usr/bin/kubectl --server https://api --token 3f9a7c2e41b8d6f0a5c4e2b1 get pods",
        "3f9a7c2e41b8d6f0a5c4e2b1",
        "--token ***",
    ),
    (
        "password_flag",
        "flag",
        "registry-login --username admin --password=S3cr3t!Pa55 --insecure",
        "S3cr3t!Pa55",
        "--password=***",
    ),
    (
        "client_secret_flag",
        "flag",
        "oidc-helper --client-id kube --client-secret=Xk29fjQ0vP1LmZ8e",
        "Xk29fjQ0vP1LmZ8e",
        "--client-secret=***",
    ),
    (
        "bootstrap_token_flag",
        "flag",
        "kubelet --bootstrap-token=07401b.f395accd246ae52d --node-ip=10.0.0.7",
        "07401b.f395accd246ae52d",
        "--bootstrap-token=***",
    ),
    (
        "logrus_password_assignment",
        "assignment",
        "time=\"2026-12-04T09:00:00Z\" level=error msg=\"auth failed\" user=admin password=hunter2-Xy9",
        "hunter2-Xy9",
        "password=***",
    ),
    (
        "non_ascii_password_assignment",
        "assignment",
        "login failed: password=pässwört€9 user=ops",
        "pässwört€9",
        "password=*** user=ops",
    ),
    (
        "quoted_password_assignment",
        "assignment",
        "E1204 09:00:00.000000 1 auth.go:12] \"login failed\" password=\"Tr0ub4dor&3x\" user=\"ops\"",
        "Tr0ub4dor",
        "password=\"***",
    ),
    (
        "query_token_assignment",
        "assignment",
        "GET /api/v1/watch?access_token=ya29.A0ARrdaM-k9Vq&limit=500 failed",
        "ya29.A0ARrdaM-k9Vq",
        "access_token=***&limit=500",
    ),
    (
        "json_password_field",
        "assignment",
        "{\"level\":\"error\",\"msg\":\"config dump\",\"password\":\"correct horse battery staple\"}",
        "correct horse battery staple",
        "\"password\":\"***\"",
    ),
    (
        "json_client_secret_field",
        "assignment",
        "cfg {\"client_id\":\"kube\",\"client_secret\":\"GOCSPX-4fLq0aW8c2Zx9mPnTy\"}",
        "GOCSPX-4fLq0aW8c2Zx9mPnTy",
        "\"client_secret\":\"***\"",
    ),
    (
        "url_basic_auth",
        "url_credentials",
        "Failed to pull image: Get https://robot:gh7Kq2LmN9xZ@registry.example.internal/v2/: EOF",
        "gh7Kq2LmN9xZ",
        "https://robot:***@registry",
    ),
    (
        "redis_url_credentials",
        "url_credentials",
        "dial redis://default:p4ssW0rdRedis@10.0.0.9:6379/0 timed out",
        "p4ssW0rdRedis",
        "redis://default:***@10.0.0.9",
    ),
    (
        "bearer_header",
        "auth_header",
        "request headers: Authorization: Bearer 8f14e45fceea167a5a36dedd4bea2543 Accept: */*",
        "8f14e45fceea167a5a36dedd4bea2543",
        "Authorization: Bearer ***",
    ),
    (
        "basic_header",
        "auth_header",
        "proxy said 407: Proxy-Authorization: Basic YWRtaW46czNjcjN0UGFzcw== rejected",
        "YWRtaW46czNjcjN0UGFzcw==",
        "Basic ***",
    ),
    (
        "pem_rsa_key",
        "private_key",
        "loaded key -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY----- from disk",
        "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
        "-----BEGIN RSA PRIVATE KEY-----***-----END RSA PRIVATE KEY----- from disk",
    ),
    (
        "pem_key_cut_short",
        "private_key",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
        "-----BEGIN PRIVATE KEY-----***",
    ),
    (
        "gcp_service_account_private_key",
        "private_key",
        "{\"type\":\"service_account\",\"private_key\":\"-----BEGIN PRIVATE KEY-----\\nMIIEvgIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n\"}",
        "MIIEvgIBADANBgkqhkiG9w0BAQEFAASC",
        "-----BEGIN PRIVATE KEY-----***-----END PRIVATE KEY-----",
    ),
    (
        "aws_access_key_id",
        "aws_key",
        "NoCredentialProviders: using AKIAIOSFODNN7EXAMPLE for ecr GetAuthorizationToken",
        "IOSFODNN7EXAMPLE",
        "AKIA***",
    ),
    (
        "aws_secret_next_to_id",
        "aws_key",
        "ecr creds AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY refused",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AKIA*** *** refused",
    ),
    (
        "aws_secret_named",
        "aws_key",
        "env AWS_SECRET_ACCESS_KEY=je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY set",
        "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
        "AWS_SECRET_ACCESS_KEY=***",
    ),
    (
        "aws_session_key_id",
        "aws_key",
        "assumed role with ASIAY34FZKBOKMUTVV7A until 10:00",
        "Y34FZKBOKMUTVV7A",
        "ASIA***",
    ),
    (
        "gcp_private_key_id",
        "gcp_key",
        "{\"type\":\"service_account\",\"private_key_id\":\"1f8e3c0a9b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f\"}",
        "1f8e3c0a9b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f",
        "\"private_key_id\":\"***\"",
    ),
    (
        "gcp_api_key",
        "gcp_key",
        "maps call with key AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe failed",
        "SyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
        "AIza***",
    ),
    (
        "azure_account_key",
        "azure_key",
        "DefaultEndpointsProtocol=https;AccountName=logs;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;EndpointSuffix=core.windows.net",
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
        "AccountKey=***;EndpointSuffix",
    ),
    (
        "azure_sas_signature",
        "azure_key",
        "blob PUT https://logs.blob.core.windows.net/c/x?sv=2022-11-02&se=2026-12-05&sp=rw&sig=Zk3m%2FqL9a0Rt7yB2cX5vN8wQ1eT4uI6oP%3D 403",
        "Zk3m%2FqL9a0Rt7yB2cX5vN8wQ1eT4uI6oP%3D",
        "&sig=*** 403",
    ),
    (
        "jwt_in_text",
        "jwt",
        "token review failed for eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJpc3MiOiJrdWJlcm5ldGVzIiwic3ViIjoiZGVmYXVsdCJ9.c2lnbmF0dXJlLWZha2U: expired",
        "eyJpc3MiOiJrdWJlcm5ldGVzIiwic3ViIjoiZGVmYXVsdCJ9",
        "failed for ***: expired",
    ),
    (
        "bootstrap_token_in_text",
        "bootstrap_token",
        "Unable to authenticate the request: bootstrap token abcdef.0123456789abcdef expired",
        "abcdef.0123456789abcdef",
        "bootstrap token *** expired",
    ),
];

/// Messages that hold a trigger but no secret: they must come out unchanged.
const NEAR_MISSES: &[(&str, &str)] = &[
    ("token_bucket", "rate limiter: token bucket empty, waiting 250ms"),
    ("password_reset_without_value", "password reset required for user admin"),
    ("empty_password_assignment", "login failed: password= user=admin"),
    ("password_flag_prose", "flag --password is required"),
    ("token_flag_prose", "error: --token must be given with --server"),
    ("token_ttl_flag", "kubeadm token create --token-ttl=24h0m0s"),
    ("discovery_hash_flag", "--discovery-token-ca-cert-hash sha256:8cb2de97839780a412b93877f8507ad6c94f73add17d5d7058e91741c9d5ec78"),
    ("basic_prose", "using basic authentication for the registry"),
    ("bearer_prose", "bearer token file not found"),
    ("url_with_port", "Get https://10.96.0.1:443/api/v1/nodes?timeout=10s: dial tcp timeout"),
    ("url_without_password", "pulling from https://registry.example.internal/v2/library/nginx"),
    ("asia_timezone", "TZ is Asia/Tokyo, node clock skew 3s"),
    ("short_key_like_word", "AKIA is an access key prefix"),
    ("dotted_name_without_context", "image abcdef.0123456789abcdef not found"),
    ("secret_name", "MountVolume.SetUp failed for volume \"secret-volume\": secret \"db-creds\" not found"),
    ("service_account_token_volume", "projected token volume kube-api-access-9x2lq mounted"),
    ("max_token_setting", "max_token=5 per second"),
    ("begin_certificate", "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa\n-----END CERTIFICATE-----"),
];

fn masker() -> Masker {
    Masker::new(&MaskConfig::default()).unwrap()
}

/// A journald record holding `message` and a `_CMDLINE`, as journalctl would print it.
fn record_with(message: &str) -> Vec<u8> {
    let value = serde_json::json!({
        "_SYSTEMD_UNIT": "kubelet.service",
        "MESSAGE": message,
        "_CMDLINE": message,
    });
    serde_json::to_vec(&value).unwrap()
}

fn mask_line(masker: &Masker, line: &[u8]) -> (Vec<u8>, u64) {
    let mut out = b"previous line\n".to_vec();
    let start = out.len();
    out.extend_from_slice(line);
    let masked = masker.mask(&mut out, start, &mut MaskScratch::default());
    assert!(out.starts_with(b"previous line\n"), "bytes before the line changed");
    (out[start..].to_vec(), masked)
}

fn message_of(line: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(line).unwrap_or_else(|e| {
        panic!("not JSON after masking ({e}): {}", String::from_utf8_lossy(line))
    });
    value["MESSAGE"].as_str().unwrap().to_string()
}

#[test]
fn every_kind_of_secret_is_masked() {
    let masker = masker();
    for &(name, _, message, secret, kept) in SECRETS {
        assert!(message.contains(secret), "{name}: the sample lacks its secret");
        let (out, masked) = mask_line(&masker, &record_with(message));
        let text = message_of(&out);
        assert!(!text.contains(secret), "{name}: secret left in {text:?}");
        assert!(text.contains(kept), "{name}: {kept:?} not in {text:?}");
        assert!(masked >= 2, "{name}: {masked} masked, expected MESSAGE and _CMDLINE");
    }
}

/// Shipped regexes compile only when a line first wakes their detector: every one of
/// them must compile.
#[test]
fn every_shipped_pattern_compiles() {
    let masker = masker();
    let regexes = masker.detectors.iter().flatten();
    let shipped: usize = DETECTORS.iter().map(|d| d.patterns.len()).sum();
    assert_eq!(regexes.clone().count(), shipped);
    for compiled in regexes {
        assert!(Regex::new(&compiled.pattern).is_ok(), "{}", compiled.pattern);
    }
}

#[test]
fn each_secret_is_found_by_its_own_detector() {
    for &(name, detector, message, secret, _) in SECRETS {
        let config = MaskConfig { detectors: vec![detector.into()], ..MaskConfig::default() };
        let masker = Masker::new(&config).unwrap();
        let (out, _) = mask_line(&masker, &record_with(message));
        assert!(!message_of(&out).contains(secret), "{name}: {detector} alone misses it");
    }
}

#[test]
fn near_misses_are_left_alone() {
    let masker = masker();
    for &(name, message) in NEAR_MISSES {
        let line = record_with(message);
        let (out, masked) = mask_line(&masker, &line);
        assert_eq!(
            (String::from_utf8_lossy(&out), masked),
            (String::from_utf8_lossy(&line), 0),
            "{name}"
        );
    }
}

#[test]
fn case_names_are_unique_and_detectors_known() {
    let mut names: Vec<&str> = SECRETS.iter().map(|c| c.0).collect();
    names.extend(NEAR_MISSES.iter().map(|c| c.0));
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "duplicate case names");
    for detector in DETECTORS {
        assert!(
            SECRETS.iter().any(|c| c.1 == detector.name),
            "no sample for detector {}",
            detector.name
        );
    }
}

#[test]
fn only_the_secret_bytes_change() {
    let message = "login --password=S3cr3t!Pa55 done";
    let line = record_with(message);
    let (out, masked) = mask_line(&masker(), &line);
    let expected = String::from_utf8(line).unwrap().replace("S3cr3t!Pa55", "***");
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    assert_eq!(masked, 2);
}

#[test]
fn a_secret_cut_by_an_escape_keeps_the_escape_whole() {
    // The secret regex may stop or start inside an escape sequence; the escape survives.
    let line = br#"{"MESSAGE":"token=\u0041bcd\"xyz --token=\tab12345 Bearer \u00e9abcdefgh1"}"#;
    let (out, _) = mask_line(&masker(), line);
    let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(value["MESSAGE"].is_string(), "{}", String::from_utf8_lossy(&out));
}

#[test]
fn keys_are_never_masked() {
    // Found by fuzzing: a key holding `?sig=...` was masked, which renames the field.
    let line = br#"{"x?sig=abcdefghijklmnop": "y?sig=abcdefghijklmnop"}"#;
    let (out, masked) = mask_line(&masker(), line);
    assert_eq!(out, br#"{"x?sig=abcdefghijklmnop": "y?sig=***"}"#);
    assert_eq!(masked, 1);
}

#[test]
fn a_secret_outside_a_string_is_left_alone() {
    let line = br#"{"MESSAGE":"x","token":12345678}"#;
    let (out, masked) = mask_line(&masker(), line);
    assert_eq!((out.as_slice(), masked), (&line[..], 0));
}

#[test]
fn off_masks_nothing_and_unknown_detectors_are_refused() {
    let config = MaskConfig { enabled: false, ..MaskConfig::default() };
    let line = record_with("--password=S3cr3t!Pa55");
    let (out, masked) = mask_line(&Masker::new(&config).unwrap(), &line);
    assert_eq!((out, masked), (line, 0));
    let config = MaskConfig { detectors: vec!["telepathy".into()], ..MaskConfig::default() };
    let error = Masker::new(&config).err().unwrap().to_string();
    assert!(error.contains("telepathy") && error.contains("jwt"), "{error}");
}

#[test]
fn extra_patterns_mask_their_secret_group() {
    let extra = ExtraPattern {
        name: "vault".into(),
        pattern: r"\bhvs\.(?P<secret>[A-Za-z0-9]{20,})".into(),
        triggers: vec!["hvs.".into()],
    };
    let config = MaskConfig { detectors: vec![], extra: vec![extra], ..MaskConfig::default() };
    let masker = Masker::new(&config).unwrap();
    let (out, masked) =
        mask_line(&masker, &record_with("vault login hvs.CAESIJx1y2z3a4b5c6d7e8f9g0"));
    assert!(message_of(&out).contains("vault login hvs.***"), "{}", message_of(&out));
    assert_eq!(masked, 2);
    let bad = ExtraPattern { name: "broken".into(), pattern: "(".into(), triggers: vec![] };
    let config = MaskConfig { extra: vec![bad], ..MaskConfig::default() };
    let error = Masker::new(&config).err().unwrap().to_string();
    assert!(error.contains("broken"), "{error}");
}
