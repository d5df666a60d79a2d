//! The message of every signed request, byte for byte (the rules all of them follow are in the
//! crate doc). Each builder's doc is the format's spec; `tests` pins each one's exact bytes and
//! a fixed key's signature of them, so a change that would break a client fails a test. A
//! changed format gets a new version tag, never new bytes under an old one.

use openledger_core::ContentHash;

use crate::canonical::{DatanetDefinition, DatanetEdit, Parameters};

/// `openledger/datanet/create/v2\n<slug>\n<BLAKE3 hex of the definition's canonical JSON>`,
/// signed by the Datanet's owner-to-be (see [`DatanetDefinition::canonical_json`]).
///
/// v1 (until issue 15) hashed the protobuf encoding instead; it is no longer accepted.
pub fn datanet_create_message(definition: &DatanetDefinition) -> Vec<u8> {
    let digest = ContentHash::of(definition.canonical_json().as_bytes());
    format!("openledger/datanet/create/v2\n{}\n{}", definition.slug, digest.to_hex()).into_bytes()
}

/// `openledger/datanet/update/v2\n<datanet id>\n<BLAKE3 hex of the edit's canonical JSON>\n<signed_at>`,
/// signed by the owner (see [`DatanetEdit::canonical_json`]).
///
/// v1 (until issue 15) hashed the protobuf encoding instead; it is no longer accepted.
pub fn datanet_update_message(datanet_id: &str, edit: &DatanetEdit, signed_at: i64) -> Vec<u8> {
    let digest = ContentHash::of(edit.canonical_json().as_bytes());
    format!("openledger/datanet/update/v2\n{datanet_id}\n{}\n{signed_at}", digest.to_hex()).into_bytes()
}

/// `openledger/contribution/v1\n<datanet id>\n<file name>\n<file BLAKE3 hex>\n<account id or ->`,
/// signed by the contributor; the account is the ledger account posting the stake bond (`-`
/// for none).
pub fn contribution_message(
    datanet_id: &str,
    file_name: &str,
    file_hash: &ContentHash,
    account: Option<u128>,
) -> Vec<u8> {
    let account = account.map_or_else(|| "-".to_owned(), |id| id.to_string());
    format!("openledger/contribution/v1\n{datanet_id}\n{file_name}\n{}\n{account}", file_hash.to_hex()).into_bytes()
}

/// `openledger/review/v1\n<datanet id>\n<contribution id>\n<approve|reject>\n<reason>`, signed
/// by the owner or a validator.
pub fn review_message(datanet_id: &str, contribution_id: &str, approve: bool, reason: &str) -> Vec<u8> {
    let verdict = if approve { "approve" } else { "reject" };
    format!("openledger/review/v1\n{datanet_id}\n{contribution_id}\n{verdict}\n{reason}").into_bytes()
}

/// `openledger/remove-record/v1\n<datanet id>\n<record BLAKE3 hex>\n<signed_at>`, signed by the
/// owner.
pub fn remove_record_message(datanet_id: &str, record: &ContentHash, signed_at: i64) -> Vec<u8> {
    format!("openledger/remove-record/v1\n{datanet_id}\n{}\n{signed_at}", record.to_hex()).into_bytes()
}

/// `openledger/publish/v1\n<datanet id>\n<signed_at>`, signed by the owner to seal a version.
pub fn publish_message(datanet_id: &str, signed_at: i64) -> Vec<u8> {
    format!("openledger/publish/v1\n{datanet_id}\n{signed_at}").into_bytes()
}

/// `openledger/access-request/v1\n<datanet id>\n<purpose>`, signed by the key asking for access.
pub fn access_request_message(datanet_id: &str, purpose: &str) -> Vec<u8> {
    format!("openledger/access-request/v1\n{datanet_id}\n{purpose}").into_bytes()
}

/// `openledger/access-decision/v1\n<datanet id>\n<grant id>\n<approve|deny>\n<signed_at>`, signed
/// by the owner.
pub fn access_decision_message(datanet_id: &str, grant_id: &str, approve: bool, signed_at: i64) -> Vec<u8> {
    let verdict = if approve { "approve" } else { "deny" };
    format!("openledger/access-decision/v1\n{datanet_id}\n{grant_id}\n{verdict}\n{signed_at}").into_bytes()
}

/// `openledger/caller/v1\n<timestamp>`: a caller's identity on a read, carried in the
/// [`crate::headers::CALLER`] headers (gRPC metadata) rather than in the body.
pub fn caller_message(timestamp: i64) -> Vec<u8> {
    format!("openledger/caller/v1\n{timestamp}").into_bytes()
}

/// Which way stake moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StakeAction {
    Stake,
    Unstake,
}

impl StakeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stake => "stake",
            Self::Unstake => "unstake",
        }
    }
}

/// `openledger/stake/v1\n<operation id>\n<account id>\n<amount>` (and `openledger/unstake/v1\n…`
/// with the same fields), signed by the account's owner; the amount is in base units.
pub fn staking_message(action: StakeAction, operation_id: &str, account: u128, amount: u128) -> Vec<u8> {
    format!("openledger/{}/v1\n{operation_id}\n{account}\n{amount}", action.as_str()).into_bytes()
}

/// `openledger/proposal/v2\n<proposal id>\n<proposer account id>\n<parameters' canonical JSON>`
/// (the JSON itself, not a digest: see [`Parameters::canonical_json`]), signed by the
/// proposer's owner.
pub fn proposal_message(proposal_id: &str, proposer: u128, parameters: &Parameters) -> Vec<u8> {
    format!("openledger/proposal/v2\n{proposal_id}\n{proposer}\n{}", parameters.canonical_json()).into_bytes()
}

/// `openledger/vote/v1\n<proposal id>\n<account id>\n<yes|no>`, signed by the voting account's
/// owner.
pub fn vote_message(proposal_id: &str, account: u128, approve: bool) -> Vec<u8> {
    format!("openledger/vote/v1\n{proposal_id}\n{account}\n{}", if approve { "yes" } else { "no" }).into_bytes()
}

/// `openledger/api-key/create/v2\n<account id>\n<signed_at>\n<requests per minute>\n<tokens per
/// minute>\n<key name>`, signed by the account's owner to create an API key acting for the
/// account. The limits are the ones asked for (0: the gateway's default); the name is last
/// because it is free text.
///
/// v1 (`…/create/v1\n<account id>\n<signed_at>\n<key name>`) left the limits unsigned; no
/// service ever accepted it.
pub fn api_key_create_message(
    account: u128,
    signed_at: i64,
    requests_per_minute: u64,
    tokens_per_minute: u64,
    key_name: &str,
) -> Vec<u8> {
    format!(
        "openledger/api-key/create/v2\n{account}\n{signed_at}\n{requests_per_minute}\n{tokens_per_minute}\n{key_name}"
    )
    .into_bytes()
}

/// `openledger/api-key/revoke/v1\n<key id>\n<signed_at>`, signed by the owner of the account
/// the key acts for.
pub fn api_key_revoke_message(key_id: &str, signed_at: i64) -> Vec<u8> {
    format!("openledger/api-key/revoke/v1\n{key_id}\n{signed_at}").into_bytes()
}

#[cfg(test)]
mod tests {
    //! Golden bytes: each format's exact bytes, and the signature of them by the key with seed
    //! [7; 32], whose public key is pinned too. A failing case here means external clients
    //! would break: add a new version instead.

    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::{canonical::ContributionPolicy, sign, verify};

    const PUBLIC_KEY: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";

    fn hash(text: &str) -> ContentHash {
        ContentHash::of(text.as_bytes())
    }

    fn key(seed: u8) -> Vec<u8> {
        SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes().to_vec()
    }

    fn policy() -> ContributionPolicy {
        ContributionPolicy {
            allow_list_only: true,
            allowed_contributors: vec![key(2)],
            stake_per_contribution: 5_000_000_000_000_000_000,
            max_bytes_per_contributor_per_day: 10_000_000,
            max_files_per_contributor_per_day: 20,
            max_bytes_per_day: 0,
            max_files_per_day: 0,
            max_file_bytes: 5_000_000,
            auto_accept_score: 600,
            reject_below_score: 300,
            near_duplicate_jaccard_ppt: 800,
            review_all: false,
        }
    }

    fn definition() -> DatanetDefinition {
        DatanetDefinition {
            slug: "med-notes".into(),
            name: "Medical notes".into(),
            summary: "De-identified \"triage\" notes".into(),
            description_markdown: "# Notes\nOne per line, é included.".into(),
            tags: vec!["medical".into(), "en".into()],
            schema: "labelled_text".into(),
            label_set: vec!["urgent".into(), "routine".into()],
            licence: "CC-BY-4.0".into(),
            visibility: "private".into(),
            policy: policy(),
            validators: vec![key(3)],
        }
    }

    fn edit() -> DatanetEdit {
        DatanetEdit {
            summary: "Triage notes".into(),
            description_markdown: String::new(),
            tags: vec!["medical".into()],
            policy: ContributionPolicy::default(),
            update_mask: vec!["summary".into(), "tags".into()],
        }
    }

    fn parameters() -> Parameters {
        Parameters {
            model_owner_bps: 3_000,
            stakers_bps: 2_000,
            contributors_bps: 5_000,
            platform_fee: 1_000_000_000_000_000,
            slashing_bps: 500,
            minimum_stake: 100_000_000_000_000_000_000,
            unbonding_seconds: 604_800,
            epoch_seconds: 86_400,
            slashing_threshold_milli: -1_500,
        }
    }

    /// Checks `message`'s bytes and the fixed key's signature of them.
    fn golden(message: &[u8], text: &str, signature: &str) {
        assert_eq!(String::from_utf8_lossy(message), text);
        let signed = sign(&SigningKey::from_bytes(&[7; 32]), message);
        assert_eq!(signed.public_key_hex(), PUBLIC_KEY);
        assert_eq!(signed.signature_hex(), signature, "signature of {text:?}");
        assert_eq!(verify(&signed.public_key, &signed.signature, message), Ok(signed.public_key));
    }

    #[test]
    fn canonical_definition_json() {
        assert_eq!(
            definition().canonical_json(),
            concat!(
                r##"{"description_markdown":"# Notes\nOne per line, é included.","label_set":["urgent","routine"],"##,
                r#""licence":"CC-BY-4.0","name":"Medical notes","policy":{"allow_list_only":true,"#,
                r#""allowed_contributors":["8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"],"#,
                r#""auto_accept_score":600,"max_bytes_per_contributor_per_day":10000000,"max_bytes_per_day":0,"#,
                r#""max_file_bytes":5000000,"max_files_per_contributor_per_day":20,"max_files_per_day":0,"#,
                r#""near_duplicate_jaccard_ppt":800,"reject_below_score":300,"review_all":false,"#,
                r#""stake_per_contribution":"5000000000000000000"},"schema":"labelled_text","slug":"med-notes","#,
                r#""summary":"De-identified \"triage\" notes","tags":["medical","en"],"#,
                r#""validators":["ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1"],"#,
                r#""visibility":"private"}"#,
            )
        );
    }

    #[test]
    fn canonical_edit_json() {
        assert_eq!(
            edit().canonical_json(),
            concat!(
                r#"{"description_markdown":"","policy":{"allow_list_only":false,"allowed_contributors":[],"#,
                r#""auto_accept_score":0,"max_bytes_per_contributor_per_day":0,"max_bytes_per_day":0,"#,
                r#""max_file_bytes":0,"max_files_per_contributor_per_day":0,"max_files_per_day":0,"#,
                r#""near_duplicate_jaccard_ppt":0,"reject_below_score":0,"review_all":false,"#,
                r#""stake_per_contribution":"0"},"summary":"Triage notes","tags":["medical"],"#,
                r#""update_mask":["summary","tags"]}"#,
            )
        );
    }

    #[test]
    fn canonical_parameters_json() {
        assert_eq!(
            parameters().canonical_json(),
            concat!(
                r#"{"contributors_bps":5000,"epoch_seconds":86400,"minimum_stake":"100000000000000000000","#,
                r#""model_owner_bps":3000,"platform_fee":"1000000000000000","slashing_bps":500,"#,
                r#""slashing_threshold_milli":-1500,"stakers_bps":2000,"unbonding_seconds":604800}"#,
            )
        );
    }

    #[test]
    fn datanet_create() {
        golden(
            &datanet_create_message(&definition()),
            "openledger/datanet/create/v2\nmed-notes\n1bfef1067b4ed0ad63f651f6dc05aa784a62fa7d215ed3fef2da64298abd745c",
            "595f87f7133a17cd2f867c9707716dba42492844fe003722011bcf901e8873a6d825182b4ec7823496862f14435b106e78c5e3aa260d3d0a8c7882f966ced00e",
        );
    }

    #[test]
    fn datanet_update() {
        golden(
            &datanet_update_message("0192e4c0-0000-7000-8000-000000000001", &edit(), 1_800_000_000),
            concat!(
                "openledger/datanet/update/v2\n0192e4c0-0000-7000-8000-000000000001\n",
                "f8a0f3cbcc3c868b4056d8e4ae6ed372cfa8356c7a981a9ee58620b38c2b9dac\n1800000000"
            ),
            "f3d9dd80e18c2f99b13d770693d2d73a21410740ba94def033b36d7ce23bcbe9081fc4df2ecb310b538191a591e369c6017816c46ed6f6296d5bd8d617c8e709",
        );
    }

    #[test]
    fn contribution() {
        let file = hash("{\"text\":\"hello\"}\n");
        golden(
            &contribution_message("dn-1", "notes.jsonl", &file, Some(70_001)),
            "openledger/contribution/v1\ndn-1\nnotes.jsonl\n441ab55ce24f9a1b63e4a87afa5bc9ccf93229b0a8e6bc85677f364d42048ff6\n70001",
            "6dab5dfb5713babb0a99400c1e063ac6c6528a574a299d7e6b117f460f70805926a1128ed19507da6f4931aaf9c42c505d61c9f290fc2a793b2eadbe2d6e030b",
        );
        golden(
            &contribution_message("dn-1", "notes.jsonl", &file, None),
            "openledger/contribution/v1\ndn-1\nnotes.jsonl\n441ab55ce24f9a1b63e4a87afa5bc9ccf93229b0a8e6bc85677f364d42048ff6\n-",
            "445792bc440e1f5dda9739fb32646a3700679d127eefbd425e5f5a1d761c9df1ecd8dbb3b7e5fa527f68cad49b72d65996f08fe19643bb05f14f26b3d69d1f07",
        );
    }

    #[test]
    fn review() {
        golden(
            &review_message("dn-1", "c-9", true, ""),
            "openledger/review/v1\ndn-1\nc-9\napprove\n",
            "905a226f34c281fce73adf0e510b3c41e4f1e6dc2c360e861720fbac9cce30366b19307e59ea1a544c627877705b69ad173d3274fe6fc943ffd954a78e121c0c",
        );
        golden(
            &review_message("dn-1", "c-9", false, "off topic\nsee rules"),
            "openledger/review/v1\ndn-1\nc-9\nreject\noff topic\nsee rules",
            "a28b3a6f2dfb754d689e8398402e3ea055f6d4c514103bd3d4d348ffca8d776c8e0e02b86cd344a8e52379837989afd176537af82c799d9542ad13a62dd4010d",
        );
    }

    #[test]
    fn remove_record() {
        golden(
            &remove_record_message("dn-1", &hash("a record"), 1_800_000_000),
            "openledger/remove-record/v1\ndn-1\n8994e3901ddf03c5b944709fdb580c5cc22bba023dcd86635210861dd29035c3\n1800000000",
            "58acd828f99305562515f35dd79997329a6a36ba14960a68fd119304b4360520845d1805736f968389b919fd4482b5ab2297593caca39057dcbc5f8cc73b0d0d",
        );
    }

    #[test]
    fn publish() {
        golden(
            &publish_message("dn-1", 1_800_000_000),
            "openledger/publish/v1\ndn-1\n1800000000",
            "6cb45c92db537ca1f55ce1943680ca6a52e99ae02fa48492cab1298d8e7e7d9387fd919cd91ad703873bff9cee1c9f0414406407317b9a3647e359226394d10f",
        );
    }

    #[test]
    fn access_request() {
        golden(
            &access_request_message("dn-1", "fine-tune a triage model"),
            "openledger/access-request/v1\ndn-1\nfine-tune a triage model",
            "a5b9a247c0bdb4a9faffc5a138c3ee95c18d8ad21f4df087f29543febb929baac242fca9febbb51231a3887e75f42bccf376f7d2fa7e53a62ba1b386b0422b06",
        );
    }

    #[test]
    fn access_decision() {
        golden(
            &access_decision_message("dn-1", "g-4", true, 1_800_000_000),
            "openledger/access-decision/v1\ndn-1\ng-4\napprove\n1800000000",
            "66044b3a9de85b7d983ecf2047aa5ada86af5ea009942422a35350d8e4dc4f4a72c903f4489d2282bb7c8c852e4aa66a0b1f12dc3d68b821733dc8b55984ff05",
        );
        golden(
            &access_decision_message("dn-1", "g-4", false, 1_800_000_000),
            "openledger/access-decision/v1\ndn-1\ng-4\ndeny\n1800000000",
            "647ca790916242e4d43da7978fbce635fa889f148f99917aec39f2226c5115d593e1b7d058a546242bb3ff0e105244d3bb3cd48d5f261ccb87568939f72f3304",
        );
    }

    #[test]
    fn caller() {
        golden(
            &caller_message(1_800_000_000),
            "openledger/caller/v1\n1800000000",
            "91e48967a9a1d80711e88e6d2e223a591a48e6c6aaaa78be25643587a83a48ea39b9d440eb687b5303cd0c5f172229d369d0594be456cd928d6e517f07fdfc00",
        );
    }

    #[test]
    fn stake_and_unstake() {
        let amount = 2_000_000_000_000_000_000_000;
        golden(
            &staking_message(StakeAction::Stake, "op-1", 70_001, amount),
            "openledger/stake/v1\nop-1\n70001\n2000000000000000000000",
            "c070ff346e0a0a76edbc43ba2585f1b7e9fe51bcf6c0c3dc8b3106bb1648d1e52d75901fab7a998bc587277db04c2f9ce5fcbee563fbc71d8ee42b00d382270c",
        );
        golden(
            &staking_message(StakeAction::Unstake, "op-2", 70_001, amount),
            "openledger/unstake/v1\nop-2\n70001\n2000000000000000000000",
            "81c8ca5846ac8692efbf70cfade6432abf25c875dea23a41e293f244fc7be5c9200e70cbf76cb50983124f702d2f9aba0bbb24282525b096f348b9f3fdf2ea09",
        );
    }

    #[test]
    fn proposal() {
        golden(
            &proposal_message("p-1", 70_001, &parameters()),
            concat!(
                "openledger/proposal/v2\np-1\n70001\n",
                r#"{"contributors_bps":5000,"epoch_seconds":86400,"minimum_stake":"100000000000000000000","#,
                r#""model_owner_bps":3000,"platform_fee":"1000000000000000","slashing_bps":500,"#,
                r#""slashing_threshold_milli":-1500,"stakers_bps":2000,"unbonding_seconds":604800}"#,
            ),
            "a73cb18b86b4494dcb953809f9f6b4ab889bc5f7f34880e4756567f71e64893e4c9a49cd52383c23db4f9203edb5a7a41514d218852a573111ca73ebe6e65103",
        );
    }

    #[test]
    fn vote() {
        golden(
            &vote_message("p-1", 70_001, true),
            "openledger/vote/v1\np-1\n70001\nyes",
            "8cb3fd95259daaf082511ebd1efdaeb065f6efde62b938d1114058c3c3e9452314b26e60b71d4047c887dbb4d640beba17e3d91f423926f469758cf084aafa0b",
        );
        golden(
            &vote_message("p-1", 70_001, false),
            "openledger/vote/v1\np-1\n70001\nno",
            "a5413e365f90a2153a4db685f2b64292f2310979dd95a43ae3d0f534a345f356118835070c36e81b4df0e7b02718dca00b300f54caad81de558e094195344802",
        );
    }

    #[test]
    fn api_key_create() {
        golden(
            &api_key_create_message(70_001, 1_800_000_000, 60, 0, "ci deploys"),
            "openledger/api-key/create/v2\n70001\n1800000000\n60\n0\nci deploys",
            "bdcfbc6782e1bd7fd2ce8172f98de82e7c48010e99ed9cfbb0579d5f956743997bfb6a8671d3d8933ca08254b4c046f0ead176049ba43f8edda627eddaa0cd00",
        );
    }

    #[test]
    fn api_key_revoke() {
        golden(
            &api_key_revoke_message("0192e4c0-0000-7000-8000-000000000001", 1_800_000_000),
            "openledger/api-key/revoke/v1\n0192e4c0-0000-7000-8000-000000000001\n1800000000",
            "0c3eb0fc1f4f1c06072efa5a2473275813a368750e97521230fb3ddbab78fcb05d109ea314390fa7b99c2bd1abe1e67f977151812c7b9dbf6fdd34667b49f907",
        );
    }
}

/// What the owner of a new registry adapter signs (see [`adapter_import_message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterImport<'a> {
    pub adapter_id: &'a str,
    /// The base model's id; empty for the platform's configured base.
    pub base_model: &'a str,
    pub owner_account: u128,
    pub files: AdapterFiles<'a>,
    pub price_in: u128,
    pub price_out: u128,
    /// `public`, `private` or `allow_list`.
    pub visibility: &'a str,
    pub allowed_accounts: &'a [u128],
    pub signed_at: i64,
    pub description: &'a str,
}

/// Where an imported adapter's files come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterFiles<'a> {
    /// Sent with the request: BLAKE3 of `adapter_config.json`, then of `adapter_model.safetensors`.
    Upload { config: &'a ContentHash, weights: &'a ContentHash },
    /// An object-store key prefix or `hf://owner/name[@rev]` (no line breaks).
    Source(&'a str),
}

/// `openledger/adapter/import/v1\n<adapter id>\n<base model id>\n<owner account id>\n<files>\n<price_in>\n<price_out>\n<visibility>\n<allowed accounts>\n<signed_at>\n<description>`,
/// signed by the key owning the account. `<files>` is `upload <config BLAKE3 hex> <weights
/// BLAKE3 hex>` or `source <source>`; prices are base units per 1000 tokens; the allowed
/// accounts are comma-separated as sent (`-` for none); the description is last (free text).
pub fn adapter_import_message(import: &AdapterImport<'_>) -> Vec<u8> {
    let files = match import.files {
        AdapterFiles::Upload { config, weights } => format!("upload {} {}", config.to_hex(), weights.to_hex()),
        AdapterFiles::Source(source) => format!("source {source}"),
    };
    format!(
        "openledger/adapter/import/v1\n{}\n{}\n{}\n{files}\n{}\n{}\n{}\n{}\n{}\n{}",
        import.adapter_id,
        import.base_model,
        import.owner_account,
        import.price_in,
        import.price_out,
        import.visibility,
        account_list(import.allowed_accounts),
        import.signed_at,
        import.description,
    )
    .into_bytes()
}

/// What the owner of an adapter signs to change it; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdapterUpdate<'a> {
    pub adapter_id: &'a str,
    pub price_in: Option<u128>,
    pub price_out: Option<u128>,
    pub visibility: Option<&'a str>,
    /// `Some` replaces the allow-list (possibly with an empty one).
    pub allowed_accounts: Option<&'a [u128]>,
    pub signed_at: i64,
    pub description: Option<&'a str>,
}

/// `openledger/adapter/update/v1\n<adapter id>\n<price_in>\n<price_out>\n<visibility>\n<allowed accounts>\n<signed_at>\n<description>`,
/// signed by the adapter's owner. A field left unchanged is `-`; a replaced allow-list is
/// `[<ids comma-separated>]` (`[]` empties it); a new description is `=` then the text (last:
/// free text).
pub fn adapter_update_message(update: &AdapterUpdate<'_>) -> Vec<u8> {
    let keep = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    format!(
        "openledger/adapter/update/v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        update.adapter_id,
        keep(update.price_in.map(|price| price.to_string())),
        keep(update.price_out.map(|price| price.to_string())),
        keep(update.visibility.map(str::to_owned)),
        keep(
            update.allowed_accounts.map(|accounts| {
                format!("[{}]", accounts.iter().map(u128::to_string).collect::<Vec<_>>().join(","))
            })
        ),
        update.signed_at,
        keep(update.description.map(|text| format!("={text}"))),
    )
    .into_bytes()
}

/// `openledger/adapter/unlist/v1\n<adapter id>\n<signed_at>`, signed by the adapter's owner.
pub fn adapter_unlist_message(adapter_id: &str, signed_at: i64) -> Vec<u8> {
    format!("openledger/adapter/unlist/v1\n{adapter_id}\n{signed_at}").into_bytes()
}

fn account_list(accounts: &[u128]) -> String {
    if accounts.is_empty() {
        return "-".to_owned();
    }
    accounts.iter().map(u128::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod adapter_tests {
    //! Golden bytes of the adapter registry's messages (same key and rules as `tests`).

    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::{sign, verify};

    fn golden(message: &[u8], text: &str, signature: &str) {
        assert_eq!(String::from_utf8_lossy(message), text);
        let signed = sign(&SigningKey::from_bytes(&[7; 32]), message);
        assert_eq!(signed.public_key_hex(), "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c");
        assert_eq!(signed.signature_hex(), signature, "signature of {text:?}");
        assert_eq!(verify(&signed.public_key, &signed.signature, message), Ok(signed.public_key));
    }

    #[test]
    fn adapter_import() {
        let (config, weights) = (ContentHash::of(b"config"), ContentHash::of(b"weights"));
        let import = AdapterImport {
            adapter_id: "med-notes-r16",
            base_model: "SmolLM2-135M-Instruct.Q4_1",
            owner_account: 70_001,
            files: AdapterFiles::Upload { config: &config, weights: &weights },
            price_in: 1_000,
            price_out: 2_000,
            visibility: "allow_list",
            allowed_accounts: &[70_002, 70_003],
            signed_at: 1_800_000_000,
            description: "Clinical notes.\nSecond line.",
        };
        golden(
            &adapter_import_message(&import),
            concat!(
                "openledger/adapter/import/v1\nmed-notes-r16\nSmolLM2-135M-Instruct.Q4_1\n70001\n",
                "upload b756e64ea90c4036e88f3f07ff9a708666dc0527bf14a015249e84ff6daabaa7 ",
                "3edc5c4a5df8c79ef4f8dbdc373cd21ca041ccf39fe5693250d004092094dc4a\n",
                "1000\n2000\nallow_list\n70002,70003\n1800000000\nClinical notes.\nSecond line."
            ),
            "870998b1fbbad81338210775817627b4af3850e06aeeffad7832b0d3fc80abf862ca283dfc4e2b9f686756fc83b1f67db5a7718fe64ee7a49c7345b7eb1f9508",
        );
        let from_hub = AdapterImport {
            files: AdapterFiles::Source("hf://owner/name@main"),
            visibility: "public",
            allowed_accounts: &[],
            description: "",
            ..import
        };
        golden(
            &adapter_import_message(&from_hub),
            "openledger/adapter/import/v1\nmed-notes-r16\nSmolLM2-135M-Instruct.Q4_1\n70001\nsource hf://owner/name@main\n1000\n2000\npublic\n-\n1800000000\n",
            "1b6846bfc2f393d9b363879eade973dbada6b6b4b7574844e68e29edea0167c9ce5a507ef08a142c971d361c52c52302e4851128c1dba9697c5579389972ac03",
        );
    }

    #[test]
    fn adapter_update() {
        let all = AdapterUpdate {
            adapter_id: "med-notes-r16",
            price_in: Some(5),
            price_out: Some(0),
            visibility: Some("private"),
            allowed_accounts: Some(&[]),
            signed_at: 1_800_000_000,
            description: Some("-"),
        };
        golden(
            &adapter_update_message(&all),
            "openledger/adapter/update/v1\nmed-notes-r16\n5\n0\nprivate\n[]\n1800000000\n=-",
            "25c759f2c231a376d09b4325a420ced9ba5b0ceaf4025dc4239784b95dd168febdd3e24f47420c2caa3f76602ffc73a1ce7145032cffd7ad40d6b5c5ae5e180b",
        );
        let none = AdapterUpdate { adapter_id: "a", signed_at: 1_800_000_000, ..Default::default() };
        golden(
            &adapter_update_message(&none),
            "openledger/adapter/update/v1\na\n-\n-\n-\n-\n1800000000\n-",
            "bdc7450abceba4139e023ea5d652e0a771f090fb5014a90bae3fe7c9fe3020b5d0bd79dc93c6f995afa209931f0bb0b3cb7b76ff57c39e39c450fbed9f3d500d",
        );
    }

    #[test]
    fn adapter_unlist() {
        golden(
            &adapter_unlist_message("med-notes-r16", 1_800_000_000),
            "openledger/adapter/unlist/v1\nmed-notes-r16\n1800000000",
            "c8325e3fa23a329635c26f2150048200cf9af2f19f782e755d5c04230a87620fdd985043c0c965a88aff273b9617ec25ed60eb57d8ca724c23f7afe80898c406",
        );
    }
}
